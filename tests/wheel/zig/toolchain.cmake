# Release-wheel toolchain: zig's clang (PyPI package `ziglang`) compiling for an
# old glibc, so the wheel installs on manylinux_2_28 systems (RHEL 8, Debian 10+,
# Ubuntu 18.10+) although this machine has glibc 2.36. zig links against stubs of
# the requested glibc version and links libc++/libc++abi/libunwind statically,
# so the extension needs only libc, libpthread, libdl and ld.so at run time.
#
# Selected by tests/wheel/build.sh through the CMAKE_TOOLCHAIN_FILE environment
# variable (read by CMake >= 3.21 itself, so it works with any scikit-build-core);
# a plain `pip install .` never sees it and stays the native GCC build.
#
#   SPARSEPROP_ZIG          the zig executable (build.sh: the ziglang package's)
#   SPARSEPROP_ZIG_TARGET   x86_64-linux-gnu.2.28 or aarch64-linux-gnu.2.28
#   SETUPTOOLS_EXT_SUFFIX   the extension suffix for the target's Python
#                           (e.g. .cpython-311-aarch64-linux-gnu.so)
cmake_minimum_required(VERSION 3.21)

set(_zig "$ENV{SPARSEPROP_ZIG}")
set(_target "$ENV{SPARSEPROP_ZIG_TARGET}")
if(NOT _zig OR NOT EXISTS "${_zig}" OR NOT _target)
  message(FATAL_ERROR "zig toolchain: set SPARSEPROP_ZIG (zig executable) and SPARSEPROP_ZIG_TARGET")
endif()
string(REGEX MATCH "^[^-]+" _arch "${_target}")

# Only the aarch64 build is a cross build; the x86_64 one keeps CMake's host
# detection (x86_64), so CMakeLists.txt picks the same kernel objects either way.
if(NOT _arch STREQUAL CMAKE_HOST_SYSTEM_PROCESSOR)
  set(CMAKE_SYSTEM_NAME Linux)
  set(CMAKE_SYSTEM_PROCESSOR "${_arch}")
endif()

# CMake needs a compiler path, not "zig c++": small wrappers with zig's path and
# the target baked in, written next to wherever this file is being evaluated
# (the build tree, and each try_compile tree).
set(_bin "${CMAKE_BINARY_DIR}/zig-bin")
file(MAKE_DIRECTORY "${_bin}")
set(_wrap "${CMAKE_CURRENT_LIST_DIR}/zig-cxx.sh")
foreach(_tool c++ cc ar ranlib)
  if(_tool MATCHES "^c")
    set(_body "exec '${_wrap}' '${_zig}' ${_tool} '${_target}' \"$@\"")
  else()
    set(_body "exec '${_zig}' ${_tool} \"$@\"")
  endif()
  file(WRITE "${_bin}/zig-${_tool}" "#!/bin/sh\n${_body}\n")
  file(CHMOD "${_bin}/zig-${_tool}" PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE
       GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
endforeach()
set(CMAKE_C_COMPILER "${_bin}/zig-cc")
set(CMAKE_CXX_COMPILER "${_bin}/zig-c++")
set(CMAKE_AR "${_bin}/zig-ar" CACHE FILEPATH "" FORCE)
set(CMAKE_RANLIB "${_bin}/zig-ranlib" CACHE FILEPATH "" FORCE)

# pybind11 asks the running (x86_64) interpreter for the extension suffix; for
# a cross build that is wrong, so take the target's from the environment.
if(NOT "$ENV{SETUPTOOLS_EXT_SUFFIX}" STREQUAL "")
  set(PYTHON_MODULE_EXTENSION "$ENV{SETUPTOOLS_EXT_SUFFIX}" CACHE INTERNAL "")
  set(PYTHON_MODULE_DEBUG_POSTFIX "" CACHE INTERNAL "")
  set(PYTHON_IS_DEBUG 0 CACHE INTERNAL "")
endif()
