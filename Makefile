# capmoe - capacity-aware MoE inference server.
#
#   make            build build/capmoe and build/capmoe-server
#   make run        install missing Debian packages, build, start the server
#                   on the shipped default model (config/model)
#   make test       install missing packages, build (plain + ASan/UBSan), run
#                   the Check suites under clang's sanitizers (clang-checks),
#                   then every test (tests/run.sh)
#   make asan       the AddressSanitizer + UBSan build in build-asan/
#   make fuzz       libFuzzer harnesses of tests/fuzz/ (clang, ASan + UBSan, in
#                   build-fuzz/), each run FUZZ_SECONDS (default 30) from its seeds
#   make fuzz-long  the same for FUZZ_SECONDS=600 each (or as given)
#   make soak       the server soak of make test for SOAK_SECONDS (default 300)
#   make clang-checks  every Check suite built by clang with ASan + UBSan (clang's
#                   UBSan checks more than gcc's: pointer-overflow, ...), in build-fuzz/
#   make bench      a short benchmark (capmoe bench) printing its table
#   make install    binaries, default configuration, default model, systemd
#                   unit, license (PREFIX=/usr/local, DESTDIR= for staging)
#   make uninstall  removes what install put there (not the configuration)
#   make clean

CC      ?= cc
BUILD   ?= build
SAN     ?= 0
WERROR  ?= -Werror
OPT     ?= -O2

PKGS    := openblas libcjson libmicrohttpd libuv libpcre2-8 libutf8proc ompi-c gnutls
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)

CFLAGS  := -std=c11 -D_GNU_SOURCE -Wall -Wextra $(WERROR) -Iinclude $(PKG_CFLAGS) -MMD -MP
LDLIBS  := $(PKG_LIBS) -ldnnl -lgomp -lpthread -lm
ifeq ($(SAN),1)
# float-cast-overflow: not part of gcc's "undefined" (a double past int
# converted to int, e.g. "best_of": 6666666666 once did)
CFLAGS  += -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined,float-cast-overflow \
           -fno-sanitize-recover=undefined,float-cast-overflow
LDFLAGS += -fsanitize=address,undefined,float-cast-overflow
else ifeq ($(SAN),fuzz)
CFLAGS  += -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
           -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
CFLAGS  += $(OPT) -g
endif

CORE_SRC   := $(sort $(wildcard core/*.c))
# server/: the daemon (http, config, metrics, logs); server/api/: the OpenAI API;
# server/cli/: the `capmoe` tool's subcommands
SERVER_SRC := $(filter-out server/main_%.c server/cli/main_%.c,\
                $(sort $(wildcard server/*.c server/api/*.c server/cli/*.c)))
TEST_SRC   := $(sort $(wildcard tests/check_*.c))
CORE_OBJ   := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/obj/%.o)
TEST_BIN   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
LIB        := $(BUILD)/libcapmoe.a
SRVLIB     := $(BUILD)/libcapmoe-server.a

.PHONY: all deps test-deps run test asan tests bench clean install uninstall fuzz fuzz-long fuzzers soak clang-checks FORCE
all: $(BUILD)/capmoe $(BUILD)/capmoe-server

deps:
	@sh docker/install-deps.sh build

test-deps:
	@sh docker/install-deps.sh test

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The revision in `capmoe --version`, capmoe_build_info and the --ep mpi
# start-up check (core/engine.c): git's commit, or
# REVISION=... from outside (the Docker build has no .git). Only version.o
# is rebuilt when it changes (the stamp is rewritten only then).
REVISION ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
$(BUILD)/obj/core/version.o: CFLAGS += -DCAPMOE_REVISION='"$(REVISION)"' \
  -DCAPMOE_BUILD_FLAGS='"$(if $(filter 1,$(SAN)),-O1 ASan+UBSan,$(OPT))"'
$(BUILD)/obj/core/version.o: $(BUILD)/revision.stamp
$(BUILD)/revision.stamp: FORCE
	@mkdir -p $(dir $@); echo '$(REVISION)' | cmp -s - $@ || echo '$(REVISION)' > $@
FORCE:

# The kernels' a*b+c must become fused multiply-adds (ISO C mode forbids
# contraction by default).
$(BUILD)/obj/core/kern.o $(BUILD)/obj/core/panel.o: CFLAGS += -ffp-contract=fast -Wno-psabi
$(BUILD)/obj/core/quant.o: CFLAGS += -Wno-psabi
ifeq ($(SAN),fuzz)
# The kernels use GCC vector extensions clang lacks; the fuzz build (clang)
# takes them from gcc, uninstrumented (no parser lives there).
$(BUILD)/obj/core/kern.o $(BUILD)/obj/core/panel.o: override CC := gcc
$(BUILD)/obj/core/kern.o $(BUILD)/obj/core/panel.o: CFLAGS := -std=c11 -D_GNU_SOURCE -Iinclude \
  $(PKG_CFLAGS) -O2 -g -ffp-contract=fast -Wno-psabi -MMD -MP
endif

$(LIB): $(CORE_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(SRVLIB): $(SERVER_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/capmoe: $(BUILD)/obj/server/cli/main_cli.o $(SRVLIB) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/capmoe-server: $(BUILD)/obj/server/main_server.o $(SRVLIB) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(SRVLIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CHECK_CFLAGS) -Iserver -Iserver/api -o $@ $< $(SRVLIB) $(LIB) $(LDFLAGS) $(CHECK_LIBS) $(LDLIBS)

# Fuzz harnesses (tests/fuzz/fuzz_NAME.c): replay_NAME (any compiler, part of
# `tests`) runs them over their corpus for make test (tests/t_fuzz_replay.sh);
# fuzz_NAME is the libFuzzer binary (`make fuzz`, clang only).
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.c,%,$(sort $(wildcard tests/fuzz/fuzz_*.c)))
REPLAY_BIN := $(FUZZ_NAMES:%=$(BUILD)/fuzz/replay_%)
FUZZ_BIN   := $(FUZZ_NAMES:%=$(BUILD)/fuzz/fuzz_%)
FUZZ_SECONDS ?= 30

$(BUILD)/fuzz/replay_%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(BUILD)/obj/tests/fuzz/replay_main.o $(SRVLIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/fuzz/fuzz_%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(SRVLIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

fuzzers: $(FUZZ_BIN)
$(BUILD)/obj/tests/fuzz/%.o: CFLAGS += -Iserver -Iserver/api
.SECONDARY: $(FUZZ_NAMES:%=$(BUILD)/obj/tests/fuzz/fuzz_%.o) $(BUILD)/obj/tests/fuzz/replay_main.o

fuzz:
	@command -v clang >/dev/null 2>&1 || { echo "make fuzz needs clang with libFuzzer (Debian: apt-get install clang)"; exit 1; }
	$(MAKE) -j2 BUILD=build-fuzz CC=clang SAN=fuzz WERROR= fuzzers
	sh tests/fuzz/run.sh build-fuzz $(FUZZ_SECONDS)

clang-checks:
	@command -v clang >/dev/null 2>&1 || { echo "make clang-checks needs clang"; exit 1; }
	$(MAKE) -j2 BUILD=build-fuzz CC=clang SAN=fuzz WERROR= $(TEST_SRC:tests/%.c=build-fuzz/tests/%)
	@fail=0; for t in $(TEST_SRC:tests/%.c=build-fuzz/tests/%); do \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ./$$t > $$t.log 2>&1 && echo "PASS $$t" || \
	  { echo "FAIL $$t (log $$t.log)"; tail -n 20 $$t.log; fail=1; }; done; exit $$fail

fuzz-long:
	$(MAKE) fuzz FUZZ_SECONDS=$(if $(filter command line,$(origin FUZZ_SECONDS)),$(FUZZ_SECONDS),600)

# Benchmark programs built with the tests (and smoke-run by them).
BENCH_BIN  := $(BUILD)/tests/bench/matmul_shapes

tests: all $(TEST_BIN) $(REPLAY_BIN) $(BENCH_BIN)

SOAK_SECONDS ?= 300
soak: all
	SOAK_SECONDS=$(SOAK_SECONDS) sh tests/t_server_soak.sh

asan:
	$(MAKE) -j2 BUILD=build-asan SAN=1 tests

run: deps
	$(MAKE) all
	./$(BUILD)/capmoe-server --config config/capmoe.json

test: test-deps
	$(MAKE) -j2 tests
	$(MAKE) -j2 BUILD=build-asan SAN=1 tests
	$(MAKE) clang-checks
	sh tests/run.sh

bench: deps
	$(MAKE) all
	sh tests/bench/bench_short.sh

# ---- install ---------------------------------------------------------------
# PREFIX/bin: capmoe, capmoe-server; PREFIX/share/capmoe/model: the default
# model; SYSCONFDIR/capmoe/capmoe.json: the configuration naming that model
# (an existing file is kept); PREFIX/lib/systemd/system/capmoe.service: the
# unit with these paths; PREFIX/share/doc/capmoe: README.md, LICENSE.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
DATADIR    ?= $(PREFIX)/share/capmoe
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DOCDIR     ?= $(PREFIX)/share/doc/capmoe
MODEL_FILES := $(wildcard config/model/*)

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/model $(DESTDIR)$(SYSCONFDIR)/capmoe \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR)
	install -m 755 $(BUILD)/capmoe $(BUILD)/capmoe-server $(DESTDIR)$(BINDIR)/
	install -m 644 $(MODEL_FILES) $(DESTDIR)$(DATADIR)/model/
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/capmoe/capmoe.json ]; then \
	  echo "keeping $(DESTDIR)$(SYSCONFDIR)/capmoe/capmoe.json"; \
	else \
	  echo "writing $(DESTDIR)$(SYSCONFDIR)/capmoe/capmoe.json"; \
	  sed 's|"model": "config/model"|"model": "$(DATADIR)/model"|' config/capmoe.json \
	    > $(DESTDIR)$(SYSCONFDIR)/capmoe/capmoe.json && chmod 644 $(DESTDIR)$(SYSCONFDIR)/capmoe/capmoe.json; \
	fi
	sed -e 's|/usr/local/bin|$(BINDIR)|g' -e 's|/usr/local/etc|$(SYSCONFDIR)|g' \
	  -e 's|/usr/local/share/doc/capmoe|$(DOCDIR)|g' docker/capmoe.service > $(DESTDIR)$(UNITDIR)/capmoe.service
	chmod 644 $(DESTDIR)$(UNITDIR)/capmoe.service
	install -m 644 README.md LICENSE $(DESTDIR)$(DOCDIR)/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/capmoe $(DESTDIR)$(BINDIR)/capmoe-server \
	  $(DESTDIR)$(UNITDIR)/capmoe.service $(DESTDIR)$(DOCDIR)/README.md $(DESTDIR)$(DOCDIR)/LICENSE
	rm -rf $(DESTDIR)$(DATADIR)
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null

clean:
	rm -rf build build-asan build-fuzz

-include $(CORE_OBJ:.o=.d) $(SERVER_OBJ:.o=.d) $(wildcard $(BUILD)/obj/tests/fuzz/*.d) $(BUILD)/obj/server/cli/main_cli.d $(BUILD)/obj/server/main_server.d
