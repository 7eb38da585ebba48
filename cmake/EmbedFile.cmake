# cmake -DIN=<file> -DOUT=<file.c> -DNAME=<id> -P EmbedFile.cmake
# Writes the bytes of IN as a C array, so the binary carries them.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR len "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" body "${body}")
file(WRITE ${OUT}
"// Generated from ${IN} by cmake/EmbedFile.cmake. Do not edit.\n"
"#include <stddef.h>\n#include <stdint.h>\n"
"extern const uint8_t vk_fds_${NAME}[];\n"
"extern const size_t vk_fds_${NAME}_len;\n"
"const uint8_t vk_fds_${NAME}[] = {\n${body}\n};\n"
"const size_t vk_fds_${NAME}_len = ${len};\n")
