# Builds cachectl.core for one Lua ABI into build/<abi>/cachectl/core.so.
#   make                      Lua 5.4 (build/5.4)
#   make LUA=5.1|5.3|luajit   the other ABIs
#   make SANITIZE=address     an AddressSanitizer build (build/<abi>-asan)
LUA ?= 5.4
SANITIZE ?=
CC ?= cc
ifeq ($(LUA),luajit)
LUA_CFLAGS ?= $(shell pkg-config --cflags luajit)
else
LUA_CFLAGS ?= -I/usr/include/lua$(LUA)
endif
WARN = -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes -Werror
CFLAGS ?= -O2 -g
ALL_CFLAGS = -std=c99 -D_GNU_SOURCE -fPIC -fvisibility=hidden $(WARN) $(LUA_CFLAGS) $(CFLAGS)
OUT = build/$(LUA)$(if $(SANITIZE),-$(SANITIZE))
ifneq ($(SANITIZE),)
ALL_CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
LDSAN = -fsanitize=$(SANITIZE)
endif
SRC = src/core.c src/transport.c src/options.c src/endpoints.c src/errors.c src/parse.c
HDR = src/cachectl.h src/compat.h

all: $(OUT)/cachectl/core.so

$(OUT)/cachectl/core.so: $(SRC) $(HDR)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -shared -o $@ $(SRC) $(LDSAN) -lcurl -lm

clean:
	rm -rf build

.PHONY: all clean
