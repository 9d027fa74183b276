"""Builds `serving_loader.cc`, the C++ SavedModel loader the export tests run.

It compiles against the headers and shared libraries the TensorFlow wheel ships. Besides
`libtensorflow_cc.so.2` (LoadSavedModel, DirectSession) it links
`python/lib_pywrap_tensorflow_common.so`: in the pip wheel that library holds the static
registration of the DirectSession factory, without which LoadSavedModel fails with "No
session factory registered". That library refers to the Python C API, so the program also
links libpython; it never starts an interpreter.
"""

import os
import shutil
import subprocess
import sysconfig

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serving_loader.cc")


class BuildError(RuntimeError):
    """The C++ loader cannot be built on this machine; the message says why."""


def build_serving_loader(directory):
    """Compiles the loader into `directory` and returns the executable's path."""
    import tensorflow as tf

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise BuildError("no C++ compiler (g++ or c++) on PATH")
    tf_lib = tf.sysconfig.get_lib()
    pywrap = os.path.join(tf_lib, "python", "lib_pywrap_tensorflow_common.so")
    if not os.path.exists(os.path.join(tf_lib, "libtensorflow_cc.so.2")) or not os.path.exists(
        pywrap
    ):
        raise BuildError(
            f"the TensorFlow wheel at {tf_lib} lacks libtensorflow_cc.so.2 or {pywrap}"
        )
    python_libdir = sysconfig.get_config_var("LIBDIR")
    python_library = sysconfig.get_config_var("LDLIBRARY") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not python_library.endswith(".so"):
        raise BuildError(
            "this Python has no shared libpython, which lib_pywrap_tensorflow_common.so needs"
        )
    executable = os.path.join(directory, "serving_loader")
    command = [
        compiler,
        *tf.sysconfig.get_compile_flags(),
        "-O1",
        "-w",
        SOURCE,
        "-o",
        executable,
        f"-L{tf_lib}",
        f"-L{os.path.dirname(pywrap)}",
        f"-L{python_libdir}",
        # Link the registration library although no symbol of it is referenced.
        "-Wl,--no-as-needed",
        f"-l:{os.path.basename(pywrap)}",
        "-l:libtensorflow_cc.so.2",
        "-l:libtensorflow_framework.so.2",
        f"-l:{python_library}",
        f"-Wl,-rpath,{tf_lib}:{os.path.dirname(pywrap)}:{python_libdir}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise BuildError(f"compiling serving_loader.cc failed:\n{completed.stderr[-3000:]}")
    return executable
