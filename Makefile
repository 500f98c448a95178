# Builds cachectl.core for one Lua ABI into build/<abi>/cachectl/core.so.
#   make                      Lua 5.4 (build/5.4)
#   make LUA=5.1|5.3|luajit   the other ABIs
#   make SANITIZE=address     an AddressSanitizer build (build/<abi>-address;
#                             SANITIZE=thread: ThreadSanitizer, build/<abi>-thread)
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
include src/sources.mk
SRC = $(addprefix src/,$(CC_RUN) $(CC_TEXT) $(CC_LEAVES))
HDR = $(addprefix src/,$(CC_HEADERS))

all: $(OUT)/cachectl/core.so

$(OUT)/cachectl/core.so: $(SRC) $(HDR)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -shared -o $@ $(SRC) $(LDSAN) -lcurl -lyaml -lhiredis -lcrypto -lanl -lm

clean:
	rm -rf build

# Compiles every source against another libcurl's headers (no link), e.g. the
# oldest supported, 7.68: make check-curl CURL_INCLUDE=/path/to/curl-7.68.0/include
check-curl:
	@test -n "$(CURL_INCLUDE)" || { echo "usage: make check-curl CURL_INCLUDE=DIR"; exit 2; }
	@grep -h "define LIBCURL_VERSION " $(CURL_INCLUDE)/curl/curlver.h
	@for f in $(SRC); do $(CC) $(ALL_CFLAGS) -I$(CURL_INCLUDE) -fsyntax-only $$f || exit 1; done
	@echo "check-curl: every source compiles against $(CURL_INCLUDE)"

.PHONY: all clean check-curl

# ---- tests and demo ---------------------------------------------------
# Tests talk to 127.0.0.1 only: never through a proxy from the environment.
unexport http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
export NO_PROXY = 127.0.0.1,localhost,::1
export no_proxy = $(NO_PROXY)
# lua/: the library (the cachectl rock); mock/lua/: the mock server (the cachectl-mock rock)
export LUA_PATH_5_4 = lua/?.lua;lua/?/init.lua;mock/lua/?.lua;mock/lua/?/init.lua;;
export LUA_CPATH_5_4 = build/5.4/?.so;;

# busted without make's flags: a spec that runs make (nginx's LuaJIT build,
# make docs) runs it on its own, not as a job of this make.
BUSTED = MAKEFLAGS= busted
ASAN_LIB = $(shell $(CC) -print-file-name=libasan.so)

lint:
	luacheck .
	for r in cachectl-*.rockspec; do luarocks --lua-version=5.4 lint $$r || exit 1; done
	@# the rockspec builds the C files of src/sources.mk, no more, no fewer
	@test "$$(grep -ho 'src/[a-z_]*\.c' cachectl-[0-9]*.rockspec | sort | tr '\n' ' ')" = \
	  "$$(echo $(SRC) | tr ' ' '\n' | sort | tr '\n' ' ')" || \
	  { echo "lint: the rockspec's C sources differ from src/sources.mk"; exit 1; }
	$(BUSTED) --lua=lua5.4 --run=lint

# The passes below run busted's tasks (.busted): the specs are tagged by what
# they need (#nginx, #redis, #proxy, #signals, #slow; #lint and #docs run in
# make lint and make docs-check). Plain `busted` runs the fast set.
# Lua 5.4: the whole behaviour suite.
spec: all
	$(BUSTED) --lua=lua5.4 --run=suite

# The suite again under Lua 5.1, 5.3 and LuaJIT, each with its own build,
# without the nginx specs (nginx runs its own LuaJIT build whatever Lua runs
# busted) and the Redis ones (run under 5.4 and ASan).
# One ABI alone: make spec-5.1, spec-5.3, spec-luajit.
ABIS = 5.1 5.3 luajit
spec-abis: $(addprefix spec-,$(ABIS))
$(addprefix spec-,$(ABIS)): spec-%:
	@$(MAKE) --no-print-directory LUA=$*
	@echo "== busted under $(if $(filter luajit,$*),luajit,lua$*)"
	$(BUSTED) --lua=$(if $(filter luajit,$*),luajit,lua$*) --cpath="build/$*/?.so" --run=abi

# The suite with the module built under AddressSanitizer (LeakSanitizer
# included), without the nginx specs; every process of the run gets the runtime.
spec-asan:
	$(MAKE) SANITIZE=address
	LD_PRELOAD=$(ASAN_LIB) ASAN_OPTIONS=detect_leaks=1 \
	  $(BUSTED) --lua=lua5.4 --cpath="build/5.4-address/?.so" --run=asan -o TAP

# ThreadSanitizer: the module built with -fsanitize=thread, loaded by 16
# threads at once, each with its own lua_State, each making its first call
# against a mock server (spec/tsan/harness.c, run by spec/tsan/run.lua).
spec-tsan:
	$(MAKE) SANITIZE=thread
	@mkdir -p build/tsan
	$(CC) -std=c99 -D_GNU_SOURCE -fsanitize=thread -g -O1 $(WARN) $(LUA_CFLAGS) \
	  -o build/tsan/harness spec/tsan/harness.c -llua$(LUA) -lpthread -ldl
	lua$(LUA) spec/tsan/run.lua build/tsan/harness "build/$(LUA)-thread/?.so"

# The fast set (plain `busted`) under valgrind: no errors, no definite leaks.
# Specs that wait on real time are left out: valgrind's slowdown makes them flaky.
spec-valgrind: all
	MAKEFLAGS= CACHECTL_SPEC_SLACK=0.5 valgrind -q --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=9 \
	  lua5.4 $(shell command -v busted) --ignore-lua --run=default -o TAP

# A local install with luarocks into a throw-away tree (the library's rock,
# then the mock's, which depends on it), then a require of each. The library's
# rock alone holds no module of the mock (the mock's sources are in mock/lua/,
# out of the lua/ that luarocks' builtin build copies whole).
rock:
	rm -rf build/tree
	luarocks --lua-version=5.4 --tree build/tree make --deps-mode=none $(wildcard cachectl-[0-9]*.rockspec) >/dev/null
	@if luarocks --lua-version=5.4 --tree build/tree show cachectl | grep -q 'cachectl\.mock' \
	  || [ -e build/tree/share/lua/5.4/cachectl/mock ]; then \
	  echo "make rock: the cachectl rock installs modules of the mock"; exit 1; fi
	luarocks --lua-version=5.4 --tree build/tree make --deps-mode=none $(wildcard cachectl-mock-*.rockspec) >/dev/null
	test -x build/tree/bin/cachectl-mock
	cd /tmp && LUA_PATH_5_4="$(CURDIR)/build/tree/share/lua/5.4/?.lua;$(CURDIR)/build/tree/share/lua/5.4/?/init.lua;;" \
	  LUA_CPATH_5_4="$(CURDIR)/build/tree/lib/lua/5.4/?.so;;" \
	  lua5.4 -e 'local c = require "cachectl"; assert(c.version and c.omni.new and require("cachectl.mock").start and require("cachectl.mock.busted").use); print("installed rocks: cachectl and cachectl-mock " .. c.version)'

# The packaging check: a source rock installed into an empty tree, used from outside.
pack-check:
	bash .ci/pack-check

# The API reference from the doc comments (config.ld), into build/docs/;
# a warning of LDoc fails the target.
docs:
	@mkdir -p build
	@ldoc . >build/ldoc.log 2>&1; status=$$?; cat build/ldoc.log; \
	  if [ $$status -ne 0 ] || grep -qv -e '^reading configuration from ' -e '^output written to ' build/ldoc.log; \
	  then echo "make docs: LDoc failed or warned (above)" >&2; exit 1; fi

# The man page, cachectl(1), generated from the command's parser (each
# command's --help text): spec/cli_man_spec.lua fails when it is stale.
man: all
	lua5.4 -e 'io.write(require("cachectl.cli.man").page())' >docs/man/man1/cachectl.1

# The documentation's checks (the #docs specs): every ```lua and ```sh sample
# of README.md and docs/*.md, run against the mock; docs/cli.md against the
# command's --help; docs/mock.md's example; the LDoc reference (make docs).
docs-check: all
	$(BUSTED) --lua=lua5.4 --run=docs

# Everything, as CI runs it. The builds first, then the passes side by side,
# TEST_JOBS at a time (make test TEST_JOBS=1: one after the other), each
# pass's output printed whole when it ends: a busted pass spends most of its
# time waiting (servers, timeouts, rate-limit windows), not computing. The
# longest passes start first. LuaJIT's build is made before: the nginx specs
# make it too.
TEST_JOBS ?= 3
TEST_PASSES = lint spec spec-asan spec-valgrind $(addprefix spec-,$(ABIS)) docs-check spec-tsan \
  bench-smoke pack-check rock
test:
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory LUA=luajit
	@$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target $(TEST_PASSES)

demo: all
	bash examples/demo.sh

# Benchmarks (bench/Makefile) and fuzzing (fuzz/Makefile) live in their folders.
bench: all
	$(MAKE) -C bench all

bench-smoke: all
	$(MAKE) -C bench smoke

fuzz:
	$(MAKE) -C fuzz run

.PHONY: lint spec docs-check spec-abis $(addprefix spec-,$(ABIS)) spec-asan spec-tsan spec-valgrind rock pack-check docs man test demo bench bench-smoke fuzz
