# targets.cmake: the fuzz targets, shared by the corpus replays (replay.cmake,
# every build) and the libFuzzer build (CMakeLists.txt, VK_FUZZ=ON).
#
# A target <name> is fuzz_<name>.c, exercising one server module, with its
# seed corpus in corpus/fuzz_<name>/.
set(VK_FUZZ_TARGETS frame timeout percent_roundtrip base64_roundtrip gzip)
set(VK_FUZZ_SRC_DIR ${CMAKE_CURRENT_LIST_DIR})

# vk_fuzz_executable(<name> <extra sources>...): the executable fuzz_<name>
# from its target file, the module under test and the extra sources.
function(vk_fuzz_executable name)
  if(name STREQUAL "gzip")
    set(module ${CMAKE_SOURCE_DIR}/server/compress.c)
  else()
    set(module ${CMAKE_SOURCE_DIR}/server/wire.c)
  endif()
  add_executable(fuzz_${name} ${VK_FUZZ_SRC_DIR}/fuzz_${name}.c ${module}
                              ${ARGN})
  target_include_directories(fuzz_${name} PRIVATE ${CMAKE_SOURCE_DIR}/server
                                                  ${VK_FUZZ_SRC_DIR})
  target_compile_options(fuzz_${name} PRIVATE ${VK_C_WARNINGS})
  target_link_libraries(fuzz_${name} PRIVATE vk_boringssl ZLIB::ZLIB)
endfunction()
