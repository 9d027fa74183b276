"""Keras 3 BLIP models: vision tower, text tower, task models."""
