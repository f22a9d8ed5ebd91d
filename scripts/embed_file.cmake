# cmake -DINPUT=file -DOUTPUT=out.cc -DSYMBOL=name -P embed_file.cmake
# Writes a C++ source defining `extern const unsigned char SYMBOL[]` and SYMBOL##Size.
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" hex_len)
math(EXPR size "${hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){24})" "\\1\n" bytes "${bytes}")
file(WRITE "${OUTPUT}" "// Generated from ${INPUT} by scripts/embed_file.cmake. Do not edit.\n#include <cstddef>\nnamespace ampd::engine {\nextern const unsigned char ${SYMBOL}[] = {\n${bytes}\n};\nextern const size_t ${SYMBOL}Size = ${size};\n}  // namespace ampd::engine\n")
