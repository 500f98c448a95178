/* fuzz_common.h — what the harnesses share: a Lua 5.4 state set up the way
 * luaopen_cachectl_core sets it up (cjson.decode in the registry as
 * "cachectl.decode", the error metatable), and CHECK(). */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include "cachectl.h"

lua_State *fuzz_lua(void);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

#endif
