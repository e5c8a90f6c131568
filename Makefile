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

# The SD 2.x single-file fixture tests/test_sd2_layout.c reads, made from the
# sd1-tiny reference (only when ../shared holds it).
SD2_SRC     := ../shared/reference/sd1-tiny/model-diffusers
SD2_FIXTURE := $(if $(wildcard $(SD2_SRC)),$(BUILD)/fixtures/sd2-tiny-ldm.safetensors)
$(BUILD)/fixtures/sd2-tiny-ldm.safetensors: tests/fixtures/make_sd2_ldm.py $(wildcard $(SD2_SRC)/*/*.safetensors)
	@mkdir -p $(dir $@)
	python3 tests/fixtures/make_sd2_ldm.py $(SD2_SRC) $@

test: all $(TEST_BIN) $(SD2_FIXTURE)
	@BUILD=$(BUILD) tests/run.sh $(TEST_BIN) $(TEST_SH)

bench: $(BUILD)/bench
	$(BUILD)/bench

$(BUILD)/bench: $(BUILD)/tests/bench/bench.o $(BUILD)/libdiffuse.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# Every test binary and the reference checker under valgrind (memcheck, leaks).
valgrind: all $(TEST_BIN)
	@OPENBLAS_NUM_THREADS=1 VALGRIND="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite" \
	    BUILD=$(BUILD) tests/run.sh $(TEST_BIN) tests/test_refcheck.sh

install: all
	install -D -m 755 $(BUILD)/diffuse $(DESTDIR)$(PREFIX)/bin/diffuse

# The GIMP 2.10 plug-in (plugin/), built where pkg-config finds libgimp 2.0 and
# left out elsewhere (tests/test_gimp*.sh then fail under CI=true, else skip).
# It lives in a folder of its own name, the form GIMP 2.10 and 3.0 both load
# from a plug-in-path entry; the default model sits beside it in models/default.
GIMP_PKGS   := gimp-2.0 gimpui-2.0 gegl-0.4 babl
HAVE_GIMP   := $(shell pkg-config --exists $(GIMP_PKGS) 2>/dev/null && echo yes)
PLUGIN_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(wildcard plugin/*.c))
PLUGIN_DIR  := $(BUILD)/plug-ins/diffuse
PLUGIN_BIN  := $(PLUGIN_DIR)/diffuse
PLUGIN_TEST := $(BUILD)/tests/gimp/test_core
GIMP_PLUGINS ?= $(HOME)/.config/GIMP/2.10/plug-ins
.PHONY: plugin install-plugin
ifeq ($(HAVE_GIMP),yes)
all: plugin
plugin: $(PLUGIN_BIN) $(PLUGIN_TEST) $(if $(wildcard models/default),$(PLUGIN_DIR)/models/default)

$(BUILD)/plugin/%.o: plugin/%.c $(wildcard plugin/*.h) engine/diffuse.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DGLIB_DISABLE_DEPRECATION_WARNINGS $(shell pkg-config --cflags $(GIMP_PKGS)) -c $< -o $@

$(PLUGIN_BIN): $(PLUGIN_OBJ) $(BUILD)/libdiffuse.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(shell pkg-config --libs $(GIMP_PKGS)) $(LDLIBS) -o $@

# the core's unit test (run by tests/test_gimp.sh): the plug-in without its front end
$(BUILD)/tests/gimp/%.o: tests/gimp/%.c $(wildcard plugin/*.h) tests/test.h engine/diffuse.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DGLIB_DISABLE_DEPRECATION_WARNINGS $(shell pkg-config --cflags $(GIMP_PKGS)) -c $< -o $@

$(PLUGIN_TEST): $(BUILD)/tests/gimp/test_core.o $(filter-out %/gimp2.o,$(PLUGIN_OBJ)) $(BUILD)/libdiffuse.a
	$(CC) $(LDFLAGS) $^ $(shell pkg-config --libs $(GIMP_PKGS)) $(LDLIBS) -o $@

# a link, so the build tree's plug-in finds the repository's default model
$(PLUGIN_DIR)/models/default:
	@mkdir -p $(dir $@)
	ln -sfn $(CURDIR)/models/default $@

install-plugin: plugin
	install -D -m 755 $(PLUGIN_BIN) $(DESTDIR)$(GIMP_PLUGINS)/diffuse/diffuse
	@if [ -e models/default ]; then \
	    echo "installing models/default into $(DESTDIR)$(GIMP_PLUGINS)/diffuse/models/default"; \
	    rm -rf $(DESTDIR)$(GIMP_PLUGINS)/diffuse/models/default.new && \
	    mkdir -p $(DESTDIR)$(GIMP_PLUGINS)/diffuse/models && \
	    cp -RL models/default $(DESTDIR)$(GIMP_PLUGINS)/diffuse/models/default.new && \
	    rm -rf $(DESTDIR)$(GIMP_PLUGINS)/diffuse/models/default && \
	    mv $(DESTDIR)$(GIMP_PLUGINS)/diffuse/models/default.new $(DESTDIR)$(GIMP_PLUGINS)/diffuse/models/default; \
	fi
else
plugin install-plugin:
	@echo "the GIMP plug-in needs libgimp 2.10 (apt-get install libgimp2.0-dev)" >&2; exit 1
endif

format:
	clang-format -i engine/*.c engine/*.h engine/cli/*.c tests/*.c tests/*.h plugin/*.c plugin/*.h

clean:
	rm -rf build build-san

# ---------------------------------------------------------------- default model
# models/train: the recipe of the bundled model (PyTorch + numpy, Debian's
# python3-torch / python3-numpy). `make model` continues the CPU run in
# models/train/runs/default and re-exports models/default (see
# models/MODEL_CARD.md for the GPU command line); `make bench-adherence` tests
# the judge on rendered ground truth, then measures the model through the C
# engine on 200 held-out prompts.
PYTHON ?= $(shell for p in python3 /usr/bin/python3; do $$p -c 'import numpy' 2>/dev/null && echo $$p && break; done)
ADHERENCE_IMAGES ?= 200

.PHONY: bench-adherence model
bench-adherence: all
	BUILD=$(BUILD) $(PYTHON) tests/bench/adherence.py --self-test
	BUILD=$(BUILD) $(PYTHON) tests/bench/adherence.py --images $(ADHERENCE_IMAGES) \
		--report $(BUILD)/adherence.json

model:
	cd models/train && nice -n 19 $(PYTHON) train.py --stage all --device cpu && \
		$(PYTHON) export.py --ckpt runs/default --out ../default
