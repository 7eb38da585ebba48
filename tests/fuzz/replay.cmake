# replay.cmake: each fuzz target as a plain executable (replay_main.c, any
# compiler) that runs its committed corpus; ctest runs it as
# fuzz_replay_<name>, under ASan/UBSan when VK_SANITIZE is on. Included from
# tests/CMakeLists.txt when VK_FUZZ is off.
include(${CMAKE_CURRENT_LIST_DIR}/targets.cmake)
foreach(name IN LISTS VK_FUZZ_TARGETS)
  vk_fuzz_executable(${name} ${VK_FUZZ_SRC_DIR}/replay_main.c)
  add_test(NAME fuzz_replay_${name}
           COMMAND fuzz_${name} ${VK_FUZZ_SRC_DIR}/corpus/fuzz_${name})
  set_tests_properties(fuzz_replay_${name} PROPERTIES TIMEOUT 120)
endforeach()
