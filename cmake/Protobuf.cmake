# Code generation from .proto files, at build time only (nothing generated is
# committed). Import roots: our own proto/, Debian's grpc-proto (health,
# reflection, grpc.testing) and libprotobuf-dev (google/protobuf/*.proto).
set(VK_PROTO_ROOTS
    ${CMAKE_SOURCE_DIR}/proto
    /usr/share/grpc-proto
    /usr/include)
set(VK_GEN_DIR ${CMAKE_BINARY_DIR}/gen)
file(MAKE_DIRECTORY ${VK_GEN_DIR}/c ${VK_GEN_DIR}/python ${VK_GEN_DIR}/fds)

function(vk_find_proto out rel)
  foreach(root ${VK_PROTO_ROOTS})
    if(EXISTS ${root}/${rel})
      set(${out} ${root}/${rel} PARENT_SCOPE)
      return()
    endif()
  endforeach()
  message(FATAL_ERROR "proto ${rel} not found in ${VK_PROTO_ROOTS}")
endfunction()

function(vk_proto_import_flags out)
  set(flags)
  foreach(root ${VK_PROTO_ROOTS})
    list(APPEND flags -I${root})
  endforeach()
  set(${out} ${flags} PARENT_SCOPE)
endfunction()

# vk_protoc_c(<out_srcs_var> <rel.proto>...): protobuf-c sources for each
# proto, named by its path relative to its import root.
function(vk_protoc_c out)
  vk_proto_import_flags(imports)
  set(srcs)
  foreach(rel ${ARGN})
    vk_find_proto(abs ${rel})
    string(REGEX REPLACE "\\.proto$" "" base ${rel})
    set(c ${VK_GEN_DIR}/c/${base}.pb-c.c)
    set(h ${VK_GEN_DIR}/c/${base}.pb-c.h)
    add_custom_command(
      OUTPUT ${c} ${h}
      COMMAND ${PROTOC_C} ${imports} --c_out=${VK_GEN_DIR}/c ${abs}
      DEPENDS ${abs}
      COMMENT "protoc-c ${rel}" VERBATIM)
    list(APPEND srcs ${c})
  endforeach()
  set(${out} ${srcs} PARENT_SCOPE)
endfunction()

# vk_descriptor_set(<out_src_var> <name> <rel.proto>...): a C source defining
# `const uint8_t vk_fds_<name>[]` and `const size_t vk_fds_<name>_len`, a
# serialized FileDescriptorSet of the protos and all their imports, for
# server reflection.
function(vk_descriptor_set out name)
  vk_proto_import_flags(imports)
  set(abs_list)
  foreach(rel ${ARGN})
    vk_find_proto(abs ${rel})
    list(APPEND abs_list ${abs})
  endforeach()
  set(bin ${VK_GEN_DIR}/fds/${name}.fds)
  set(c ${VK_GEN_DIR}/fds/${name}.fds.c)
  add_custom_command(
    OUTPUT ${bin}
    COMMAND ${PROTOC} ${imports} --include_imports
            --descriptor_set_out=${bin} ${abs_list}
    DEPENDS ${abs_list}
    COMMENT "descriptor set ${name}" VERBATIM)
  add_custom_command(
    OUTPUT ${c}
    COMMAND ${CMAKE_COMMAND} -DIN=${bin} -DOUT=${c} -DNAME=${name}
            -P ${CMAKE_SOURCE_DIR}/cmake/EmbedFile.cmake
    DEPENDS ${bin} ${CMAKE_SOURCE_DIR}/cmake/EmbedFile.cmake
    COMMENT "embed ${name}.fds" VERBATIM)
  set(${out} ${c} PARENT_SCOPE)
endfunction()

# vk_protoc_python(<target> <rel.proto>...): Python messages and gRPC stubs in
# ${VK_GEN_DIR}/python, for the integration tests' real grpcio client.
function(vk_protoc_python target)
  vk_proto_import_flags(imports)
  find_program(GRPC_PYTHON_PLUGIN grpc_python_plugin REQUIRED)
  set(outs)
  foreach(rel ${ARGN})
    vk_find_proto(abs ${rel})
    string(REGEX REPLACE "\\.proto$" "" base ${rel})
    set(py ${VK_GEN_DIR}/python/${base}_pb2.py)
    add_custom_command(
      OUTPUT ${py}
      COMMAND ${PROTOC} ${imports} --python_out=${VK_GEN_DIR}/python
              --grpc_out=${VK_GEN_DIR}/python
              --plugin=protoc-gen-grpc=${GRPC_PYTHON_PLUGIN} ${abs}
      DEPENDS ${abs}
      COMMENT "protoc python ${rel}" VERBATIM)
    list(APPEND outs ${py})
  endforeach()
  add_custom_target(${target} ALL DEPENDS ${outs})
endfunction()
