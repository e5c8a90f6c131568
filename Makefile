# Diffuse: make (build), make test, make bench, make install, make format.
# SANITIZE=1 builds everything with ASan+UBSan into build-san/.

CC      ?= cc
PKGS    := openblas libcjson libutf8proc libpng zlib
ifeq ($(SANITIZE),1)
BUILD   ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT     := -O1
else
BUILD   ?= build
SANFLAGS :=
OPT     := -O3
endif
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation -Wno-psabi -fPIC $(SANFLAGS) \
	   -Iengine $(shell pkg-config --cflags $(PKGS))
LDLIBS  := $(shell pkg-config --libs $(PKGS)) -lm -lpthread
LDFLAGS += $(SANFLAGS)

ENGINE_SRC := $(wildcard engine/*.c)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
CLI_SRC    := $(wildcard engine/cli/*.c)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_SH    := $(wildcard tests/test_*.sh)
PREFIX     ?= $(HOME)/.local

.PHONY: all engine test valgrind bench install format clean
all: $(BUILD)/libdiffuse.a $(BUILD)/diffuse

$(BUILD)/%.o: %.c $(wildcard engine/*.h) $(wildcard engine/cli/*.h) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libdiffuse.a: $(ENGINE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/diffuse: $(CLI_OBJ) $(BUILD)/libdiffuse.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/libdiffuse.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

test: all $(TEST_BIN)
	@BUILD=$(BUILD) tests/run.sh $(TEST_BIN) $(TEST_SH)

# Every test binary and the reference checker under valgrind (memcheck, leaks).
valgrind: all $(TEST_BIN)
	@OPENBLAS_NUM_THREADS=1 VALGRIND="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite" \
	    BUILD=$(BUILD) tests/run.sh $(TEST_BIN) tests/test_refcheck.sh

install: all
	install -D -m 755 $(BUILD)/diffuse $(DESTDIR)$(PREFIX)/bin/diffuse

format:
	clang-format -i engine/*.c engine/*.h engine/cli/*.c tests/*.c tests/*.h

clean:
	rm -rf build build-san
