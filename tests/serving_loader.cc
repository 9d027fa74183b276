// Runs SavedModel signatures the way TF Serving does: tensorflow::LoadSavedModel (restore the
// variables through the MetaGraph's saver, run the init op) and Session::Run on the tensor
// names of a signature. No Python and no TF2 object loader are involved.
//
//     serving_loader EXPORT_DIR MANIFEST
//
// Each MANIFEST line is tab-separated: SIGNATURE, OUTPUT_PREFIX, then NAME=PATH per input,
// where PATH holds a serialized TensorProto. Each output is written as a serialized TensorProto
// to OUTPUT_PREFIX.NAME.pb; a request that fails writes its status to OUTPUT_PREFIX.error and
// the next request runs. Exit status 0 once the model loaded, 1 if loading failed.

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor.pb.h"

namespace {

std::vector<std::string> Split(const std::string& line, char separator) {
  std::vector<std::string> fields;
  std::stringstream stream(line);
  std::string field;
  while (std::getline(stream, field, separator)) fields.push_back(field);
  return fields;
}

bool ReadFile(const std::string& path, std::string* contents) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return false;
  std::stringstream buffer;
  buffer << file.rdbuf();
  *contents = buffer.str();
  return true;
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream file(path, std::ios::binary);
  file << contents;
}

// Looks a key up by iterating: protobuf's inline Map::find, compiled here against the wheel's
// headers, can miss keys of maps built inside libtensorflow (seen with TensorFlow 2.21).
template <typename Map>
const typename Map::mapped_type* Lookup(const Map& map, const std::string& key) {
  for (const auto& entry : map) {
    if (entry.first == key) return &entry.second;
  }
  return nullptr;
}

tensorflow::Status RunRequest(const tensorflow::SavedModelBundle& bundle,
                              const std::vector<std::string>& fields) {
  const auto& signatures = bundle.meta_graph_def.signature_def();
  const tensorflow::SignatureDef* signature = Lookup(signatures, fields[0]);
  if (signature == nullptr) {
    return tensorflow::errors::NotFound("no signature named ", fields[0]);
  }

  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
  for (size_t i = 2; i < fields.size(); ++i) {
    const size_t equals = fields[i].find('=');
    const std::string name = fields[i].substr(0, equals);
    const tensorflow::TensorInfo* input = Lookup(signature->inputs(), name);
    if (input == nullptr) {
      return tensorflow::errors::InvalidArgument("signature ", fields[0], " has no input ",
                                                 name);
    }
    std::string serialized;
    tensorflow::TensorProto proto;
    tensorflow::Tensor tensor;
    if (!ReadFile(fields[i].substr(equals + 1), &serialized) ||
        !proto.ParseFromString(serialized) || !tensor.FromProto(proto)) {
      return tensorflow::errors::InvalidArgument("cannot read the tensor for input ", name);
    }
    feeds.emplace_back(input->name(), tensor);
  }

  // Outputs in name order (a protobuf map has none of its own).
  std::vector<std::string> output_names;
  for (const auto& output : signature->outputs()) output_names.push_back(output.first);
  std::sort(output_names.begin(), output_names.end());
  std::vector<std::string> fetches;
  for (const auto& name : output_names) {
    fetches.push_back(Lookup(signature->outputs(), name)->name());
  }

  std::vector<tensorflow::Tensor> outputs;
  tensorflow::Status status = bundle.session->Run(feeds, fetches, {}, &outputs);
  if (!status.ok()) return status;
  for (size_t i = 0; i < outputs.size(); ++i) {
    tensorflow::TensorProto proto;
    outputs[i].AsProtoField(&proto);  // handles strings, unlike tensor_content
    WriteFile(fields[1] + "." + output_names[i] + ".pb", proto.SerializeAsString());
  }
  return tensorflow::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: serving_loader EXPORT_DIR MANIFEST" << std::endl;
    return 2;
  }
  tensorflow::SavedModelBundle bundle;
  const tensorflow::Status loaded = tensorflow::LoadSavedModel(
      tensorflow::SessionOptions(), tensorflow::RunOptions(), argv[1], {"serve"}, &bundle);
  if (!loaded.ok()) {
    std::cerr << "LoadSavedModel failed: " << loaded.ToString() << std::endl;
    return 1;
  }
  std::ifstream manifest(argv[2]);
  std::string line;
  while (std::getline(manifest, line)) {
    if (line.empty()) continue;
    const std::vector<std::string> fields = Split(line, '\t');
    const tensorflow::Status status = RunRequest(bundle, fields);
    if (!status.ok()) WriteFile(fields[1] + ".error", std::string(status.message()));
  }
  return 0;
}
