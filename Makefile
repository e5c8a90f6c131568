# Diffuse: make (build), make test, make bench, make install, make format.
# SANITIZE=1 builds everything with ASan+UBSan into build-san/.

CC      ?= cc
PKGS    := openblas libcjson libutf8proc libpng zlib
ifeq ($(SANITIZE),1)
BUILD   ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT     := -O1
# GEGL's own leaks at gegl_init in the GIMP plug-in tests (tests/lsan.supp)
export LSAN_OPTIONS ?= suppressions=$(CURDIR)/tests/lsan.supp
export ASAN_OPTIONS ?= fast_unwind_on_malloc=0:malloc_context_size=40
else
BUILD   ?= build
SANFLAGS :=
OPT     := -O3
endif
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation -Wno-psabi -fPIC $(SANFLAGS) \
	   -Iengine $(shell pkg-config --cflags $(PKGS))
LDLIBS  := $(shell pkg-config --libs $(PKGS)) -lmvec -lm -lpthread
# clang (make CC=clang BUILD=build-clang) knows neither of gcc's two -Wno- flags above
ifneq ($(shell $(CC) --version 2>/dev/null | grep -c clang),0)
CFLAGS  += -Wno-unknown-warning-option
endif
# oneDNN for the large 3x3 convolutions (engine/conv_dnnl.c) when libdnnl-dev
# is installed; without it the engine keeps its own im2col path everywhere.
HAVE_DNNL := $(if $(wildcard /usr/include/oneapi/dnnl/dnnl.h),yes)
ifeq ($(HAVE_DNNL),yes)
CFLAGS  += -DDIFFUSE_DNNL
LDLIBS  += -ldnnl -lgomp
endif
LDFLAGS += $(SANFLAGS)

ENGINE_SRC := $(wildcard engine/*.c)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
CLI_SRC    := $(wildcard engine/cli/*.c)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_SH    := $(wildcard tests/test_*.sh)
PREFIX     ?= $(HOME)/.local
REF        := ../shared/reference
TINY       := $(REF)/sd1-tiny/model-diffusers

.PHONY: all engine test valgrind bench install format clean
all: $(BUILD)/libdiffuse.a $(BUILD)/diffuse

$(BUILD)/%.o: %.c $(wildcard engine/*.h) $(wildcard engine/cli/*.h) $(wildcard tests/*.h) $(wildcard tests/bench/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# attention.c's kernels are written as `acc += x * v` on GCC vectors: let the
# compiler fuse them into FMAs (-std=c11 alone keeps them apart).
$(BUILD)/engine/attention.o: CFLAGS += -ffp-contract=fast

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

# LoRA files in every format tests/test_lora.c reads, for the reference models.
LORA_FIXTURE := $(if $(wildcard $(REF)/sdxl-tiny/model-diffusers),$(BUILD)/fixtures/loras/map.json)
$(BUILD)/fixtures/loras/map.json: tests/fixtures/make_loras.py
	@mkdir -p $(dir $@)
	python3 tests/fixtures/make_loras.py $(REF)/sd1-tiny/model-diffusers \
	    $(REF)/sd1-tiny/model-ldm-fp16.safetensors $(REF)/sdxl-tiny/model-diffusers \
	    $(REF)/sdxl-tiny/model-ldm-fp16.safetensors $(dir $@)

test: all $(TEST_BIN) $(SD2_FIXTURE) $(LORA_FIXTURE) $(BUILD)/bench $(BUILD)/bench_real
	@BUILD=$(BUILD) tests/run.sh $(TEST_BIN) $(TEST_SH)

bench: $(BUILD)/bench
	$(BUILD)/bench
	@echo "(real scale: make bench-sd15)"

# Stable Diffusion 1.5 at real scale: a random-weight checkpoint with every
# tensor name and shape of the real one (1.07 B parameters, fp16 single file,
# 2.1 GB), made once into $(BENCH_CACHE); per phase at 512x512 and 768x768,
# then again with OpenBLAS left to pick its own kernels (the environment's
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset: what users get), then the default
# model's whole process.
BENCH_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/diffuse/bench
BENCH_SD15  := $(BENCH_CACHE)/sd15-random-fp16.safetensors
BENCH_VOCAB ?= ../shared/clip/bpe_simple_vocab_16e6.txt.gz
.PHONY: bench-sd15
bench-sd15: $(BUILD)/bench_real $(BUILD)/diffuse
	@mkdir -p $(BENCH_CACHE)
	@[ -f $(BENCH_SD15) ] || /usr/bin/python3 tests/bench/make_sd15.py $(BENCH_SD15)
	$(BUILD)/bench_real $(BENCH_SD15) $(BENCH_VOCAB) 512 768
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BUILD)/bench_real $(BENCH_SD15) $(BENCH_VOCAB) 512
	@for i in 1 2 3; do /usr/bin/time -f "default model, 1 image, whole process: %e s, peak RSS %M KB" \
	    $(BUILD)/diffuse generate --model models/default --prompt "a red circle on a blue background" \
	    --seed $$i --output $(BUILD)/bench-default.png 2>&1 | tail -n 1; done

# SDXL base 1.0 at real scale, the same way: a random-weight checkpoint with
# every tensor name and shape of sd_xl_base_1.0 (3.47 B parameters, fp16
# single file, 6.9 GB, tests/bench/make_sdxl.py), per phase at 1024x1024 and
# 512x512, then two whole runs with their peak RSS: 1024x1024 with guidance 5
# and a Turbo-size one (512x512, 1 step, no guidance).
BENCH_SDXL := $(BENCH_CACHE)/sdxl-random-fp16.safetensors
.PHONY: bench-sdxl
bench-sdxl: $(BUILD)/bench_real $(BUILD)/diffuse
	@mkdir -p $(BENCH_CACHE)
	@[ -f $(BENCH_SDXL) ] || /usr/bin/python3 tests/bench/make_sdxl.py $(BENCH_SDXL)
	BENCH_REPS=$${BENCH_REPS:-1} $(BUILD)/bench_real $(BENCH_SDXL) $(BENCH_VOCAB) 1024 512
	/usr/bin/time -f "SDXL 512x512, 1 step, no guidance, whole process: %e s, peak RSS %M KB" \
	    $(BUILD)/diffuse generate --model $(BENCH_SDXL) --vocab $(BENCH_VOCAB) --prompt "an astronaut" \
	    --width 512 --height 512 --steps 1 --cfg 0 --sampler euler_a --seed 1 --verbose \
	    --output $(BUILD)/bench-sdxl-512.png

$(BUILD)/bench_real: $(BUILD)/tests/bench/bench_real.o $(BUILD)/libdiffuse.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bench: $(BUILD)/tests/bench/bench.o $(BUILD)/libdiffuse.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# The tokenizer's load time (both vocabulary layouts) and encode time, short
# to hostile-length input: the measurements behind its tables (tokenizer.c).
.PHONY: bench-tokenizer
bench-tokenizer: $(BUILD)/bench_tokenizer
	$(BUILD)/bench_tokenizer $(TINY)/tokenizer $(BENCH_VOCAB)

$(BUILD)/bench_tokenizer: $(BUILD)/tests/bench/bench_tokenizer.o $(BUILD)/libdiffuse.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# Every test binary, and the whole pipeline through the CLI (txt2img, masked
# img2img), under valgrind (memcheck, leaks). The full refcheck takes over an
# hour under valgrind on two cores; it runs under ASan+UBSan (SANITIZE=1).
# OMP_WAIT_POLICY set: diffuse_process_init would otherwise run the program
# again (execv, to set GOMP_SPINCOUNT), out of valgrind's sight.
VG := env OMP_WAIT_POLICY=PASSIVE valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
# oneDNN's JIT code runs tens of times slower under valgrind than the rest:
# the unit tests run on the engine's own convolutions there (DIFFUSE_CONV=
# im2col; ASan covers oneDNN's path), one CLI run below forces oneDNN.
valgrind: all $(TEST_BIN) $(LORA_FIXTURE)
	@DIFFUSE_CONV=im2col OPENBLAS_NUM_THREADS=1 VALGRIND="$(VG)" BUILD=$(BUILD) tests/run.sh $(TEST_BIN)
	OPENBLAS_NUM_THREADS=1 $(VG) $(BUILD)/diffuse generate --model $(TINY) --prompt "a red circle" \
	    --negative blurry --steps 3 --width 64 --height 64 --seed 1 --sampler dpmpp_2m --output $(BUILD)/vg.png
	OPENBLAS_NUM_THREADS=1 $(VG) $(BUILD)/diffuse generate --model $(TINY) --prompt "a red circle" \
	    --steps 3 --init $(BUILD)/vg.png --mask $(BUILD)/vg.png --strength 0.6 --sampler euler_a \
	    --seed 2 --output $(BUILD)/vg2.png
	DIFFUSE_CONV=dnnl OPENBLAS_NUM_THREADS=1 $(VG) $(BUILD)/diffuse generate --model $(REF)/sdxl-tiny/model-diffusers \
	    --prompt "a red circle" --steps 2 --cfg 5 --sampler euler --seed 1 --original-size 96x160 \
	    --output $(BUILD)/vg3.png
	OPENBLAS_NUM_THREADS=1 $(VG) $(BUILD)/diffuse generate --model $(TINY) --prompt "a red circle" \
	    --steps 2 --width 64 --height 64 --seed 1 --decoder $(REF)/taesd/model-diffusers \
	    --preview $(BUILD)/vg-preview.png --output $(BUILD)/vg4.png

install: all
	install -D -m 755 $(BUILD)/diffuse $(DESTDIR)$(PREFIX)/bin/diffuse

# The GIMP plug-in (plugin/): core.c and pixels.c, and the dialogs' shared
# model row dialog.c, compiled once per GIMP generation (compat.h and
# compat_gtk.h hold what differs), and one front end per generation, gimp2.c
# (2.10) and gimp3.c (3.0). pkg-config decides which are built: the
# 2.10 one where it finds libgimp 2.0, into $(BUILD)/plug-ins/diffuse/, the 3.0
# one where it finds libgimp 3.0, into $(BUILD)/plug-ins-3/diffuse/; both
# when both. Elsewhere they are left out (tests/test_gimp*.sh then fail under
# CI=true, else skip). Each lives in a folder of its own name, the form GIMP
# 2.10 and 3.0 both load from a plug-in-path entry; the default model sits
# beside it in models/default. On Debian 12 (no GIMP 3.0) `make test-gimp3`
# builds and tests the 3.0 one in a Debian trixie chroot (tests/gimp3/run.sh).
PLUGIN_CORE := plugin/core.c plugin/pixels.c
PLUGIN_UI   := plugin/dialog.c plugin/progress.c
PLUGIN_HDRS := $(wildcard plugin/*.h) engine/diffuse.h
GIMP_PKGS   := gimp-2.0 gimpui-2.0 gegl-0.4 babl
HAVE_GIMP   := $(shell pkg-config --exists $(GIMP_PKGS) 2>/dev/null && echo yes)
PLUGIN_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(PLUGIN_CORE) $(PLUGIN_UI) plugin/gimp2.c)
PLUGIN_DIR  := $(BUILD)/plug-ins/diffuse
PLUGIN_BIN  := $(PLUGIN_DIR)/diffuse
PLUGIN_TEST := $(BUILD)/tests/gimp/test_core
GIMP_PLUGINS ?= $(HOME)/.config/GIMP/2.10/plug-ins
GIMP3_PKGS  := gimp-3.0 gimpui-3.0
# -isystem: libgimp 3.0.4's own headers trip -Wextra (a const return type)
GIMP3_CFLAGS = $(patsubst -I%,-isystem %,$(shell pkg-config --cflags $(GIMP3_PKGS)))
HAVE_GIMP3  := $(shell pkg-config --exists $(GIMP3_PKGS) 2>/dev/null && echo yes)
PLUGIN3_OBJ := $(patsubst plugin/%.c,$(BUILD)/plugin3/%.o,$(PLUGIN_CORE) $(PLUGIN_UI) plugin/gimp3.c)
PLUGIN3_DIR := $(BUILD)/plug-ins-3/diffuse
PLUGIN3_BIN := $(PLUGIN3_DIR)/diffuse
PLUGIN3_TEST := $(BUILD)/tests/gimp3/test_core
GIMP3_PLUGINS ?= $(HOME)/.config/GIMP/3.0/plug-ins
DEFAULT_MODEL := $(wildcard models/default)
.PHONY: plugin plugin2 plugin3 install-plugin install-plugin2 install-plugin3 test-gimp3
plugin: $(if $(HAVE_GIMP),plugin2) $(if $(HAVE_GIMP3),plugin3)
install-plugin: $(if $(HAVE_GIMP),install-plugin2) $(if $(HAVE_GIMP3),install-plugin3)
ifeq ($(HAVE_GIMP)$(HAVE_GIMP3),)
plugin install-plugin:
	@echo "the GIMP plug-in needs libgimp 2.10 or 3.0 (apt-get install libgimp2.0-dev or libgimp-3.0-dev)" >&2; exit 1
endif

# a link, so the build tree's plug-in finds the repository's default model
%/diffuse/models/default:
	@mkdir -p $(dir $@)
	ln -sfn $(CURDIR)/models/default $@

# ... and to its help pages (core.h, CORE_HELP_DOMAIN)
%/diffuse/help: | plugin/help
	@mkdir -p $(dir $@)
	ln -sfn $(CURDIR)/plugin/help $@

# ... and its translations (core.h: GETTEXT_PACKAGE), one catalogue a language
# of plugin/po/LINGUAS, made with GNU msgfmt (which checks them) or, where
# there is none (the GIMP 3.0 test chroot), plugin/po/msgfmt.py
LINGUAS := $(shell cat plugin/po/LINGUAS)
MSGFMT := $(shell command -v msgfmt 2>/dev/null)
MO_NAME := gimp-plug-in-diffuse.mo
.SECONDEXPANSION:
$(BUILD)/%/LC_MESSAGES/$(MO_NAME): plugin/po/$$(notdir $$*).po plugin/po/msgfmt.py
	@mkdir -p $(dir $@)
	$(if $(MSGFMT),$(MSGFMT) -c -o $@ $<,python3 plugin/po/msgfmt.py $< $@)
# the template translators start from: make pot
.PHONY: pot
pot:
	xgettext --keyword=_ --keyword=N_ --from-code=UTF-8 --package-name=gimp-plug-in-diffuse \
	    -o plugin/po/gimp-plug-in-diffuse.pot plugin/*.c

# install-plugin-into DIR BINARY: the binary, its help pages and translations, and a copy of
# models/default (replaced whole, so an interrupted copy never leaves half a model)
define install-plugin-into
	install -D -m 755 $(2) $(DESTDIR)$(1)/diffuse/diffuse
	rm -rf $(DESTDIR)$(1)/diffuse/help && cp -R plugin/help $(DESTDIR)$(1)/diffuse/help
	rm -rf $(DESTDIR)$(1)/diffuse/locale && cp -R $(dir $(2))locale $(DESTDIR)$(1)/diffuse/locale
	@if [ -e models/default ]; then \
	    echo "installing models/default into $(DESTDIR)$(1)/diffuse/models/default"; \
	    rm -rf $(DESTDIR)$(1)/diffuse/models/default.new && \
	    mkdir -p $(DESTDIR)$(1)/diffuse/models && \
	    cp -RL models/default $(DESTDIR)$(1)/diffuse/models/default.new && \
	    rm -rf $(DESTDIR)$(1)/diffuse/models/default && \
	    mv $(DESTDIR)$(1)/diffuse/models/default.new $(DESTDIR)$(1)/diffuse/models/default; \
	fi
endef

# ---- GIMP 2.10
ifeq ($(HAVE_GIMP),yes)
all: plugin2
plugin2: $(PLUGIN_BIN) $(PLUGIN_TEST) $(PLUGIN_DIR)/help \
    $(foreach l,$(LINGUAS),$(PLUGIN_DIR)/locale/$(l)/LC_MESSAGES/$(MO_NAME)) $(if $(DEFAULT_MODEL),$(PLUGIN_DIR)/models/default)

$(BUILD)/plugin/%.o: plugin/%.c $(PLUGIN_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DGLIB_DISABLE_DEPRECATION_WARNINGS $(shell pkg-config --cflags $(GIMP_PKGS)) -c $< -o $@

$(PLUGIN_BIN): $(PLUGIN_OBJ) $(BUILD)/libdiffuse.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(shell pkg-config --libs $(GIMP_PKGS)) $(LDLIBS) -o $@

# the core's unit test (run by tests/test_gimp.sh): the plug-in without its front end
$(BUILD)/tests/gimp/%.o: tests/gimp/%.c $(PLUGIN_HDRS) tests/test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DGLIB_DISABLE_DEPRECATION_WARNINGS $(shell pkg-config --cflags $(GIMP_PKGS)) -c $< -o $@

$(PLUGIN_TEST): $(BUILD)/tests/gimp/test_core.o $(filter-out %/gimp2.o %/dialog.o %/progress.o,$(PLUGIN_OBJ)) $(BUILD)/libdiffuse.a
	$(CC) $(LDFLAGS) $^ $(shell pkg-config --libs $(GIMP_PKGS)) $(LDLIBS) -o $@

install-plugin2: plugin2
	$(call install-plugin-into,$(GIMP_PLUGINS),$(PLUGIN_BIN))
else
plugin2 install-plugin2:
	@echo "the GIMP 2.10 plug-in needs libgimp 2.10 (apt-get install libgimp2.0-dev)" >&2; exit 1
endif

# ---- GIMP 3.0 (the same core and unit test, compiled against libgimp 3.0)
ifeq ($(HAVE_GIMP3),yes)
all: plugin3
plugin3: $(PLUGIN3_BIN) $(PLUGIN3_TEST) $(PLUGIN3_DIR)/help \
    $(foreach l,$(LINGUAS),$(PLUGIN3_DIR)/locale/$(l)/LC_MESSAGES/$(MO_NAME)) $(if $(DEFAULT_MODEL),$(PLUGIN3_DIR)/models/default)

$(BUILD)/plugin3/%.o: plugin/%.c $(PLUGIN_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(GIMP3_CFLAGS) -c $< -o $@

$(PLUGIN3_BIN): $(PLUGIN3_OBJ) $(BUILD)/libdiffuse.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(shell pkg-config --libs $(GIMP3_PKGS)) $(LDLIBS) -o $@

$(BUILD)/tests/gimp3/%.o: tests/gimp/%.c $(PLUGIN_HDRS) tests/test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(GIMP3_CFLAGS) -c $< -o $@

$(PLUGIN3_TEST): $(BUILD)/tests/gimp3/test_core.o $(filter-out %/gimp3.o %/dialog.o %/progress.o,$(PLUGIN3_OBJ)) $(BUILD)/libdiffuse.a
	$(CC) $(LDFLAGS) $^ $(shell pkg-config --libs $(GIMP3_PKGS)) $(LDLIBS) -o $@

install-plugin3: plugin3
	$(call install-plugin-into,$(GIMP3_PLUGINS),$(PLUGIN3_BIN))
else
plugin3 install-plugin3:
	@echo "the GIMP 3.0 plug-in needs libgimp 3.0 (apt-get install libgimp-3.0-dev)" >&2; exit 1
endif

# GIMP 3.0's end-to-end tests, the same cases as tests/test_gimp.sh and the
# dialog screenshot, in a Debian trixie chroot made (once per machine) by
# tests/gimp3/chroot.sh; builds into build-gimp3/ inside it. Needs root. Not
# part of `make test` (.ci/run calls it after).
test-gimp3:
	@tests/gimp3/run.sh

# libFuzzer harnesses (tests/fuzz/fuzz_*.c; clang, ASan + UBSan): each parser fed
# any bytes. make fuzz runs each for FUZZ_SECONDS from its seed corpus
# (tests/fuzz/corpus/NAME/), keeping what it finds in $(BUILD)/fuzz/corpus-NAME;
# CI runs a few seconds each so a harness that stops building is noticed. The
# engine (and the CLI's PNG reader) is built once into $(BUILD)/fuzz/obj/ with
# the fuzzer's coverage; fuzz_settings, the plug-in's settings, only where
# libgimp 2.10 is. FUZZ_ONLY=NAME runs one harness. fuzz_weights reads whole
# checkpoints (its seeds are 70-90 KB): its inputs may be longer.
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_CFLAGS  := -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=address,undefined \
                -fno-sanitize-recover=undefined -Iengine $(shell pkg-config --cflags $(PKGS))
FUZZ_LIBS    := $(shell pkg-config --libs $(PKGS)) -lm -lpthread
FUZZ_OBJ     := $(patsubst %.c,$(BUILD)/fuzz/obj/%.o,$(ENGINE_SRC) engine/cli/png.c)
FUZZ_NAMES   := $(filter-out $(if $(HAVE_GIMP),,fuzz_settings),\
                $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_BIN     := $(addprefix $(BUILD)/fuzz/,$(or $(FUZZ_ONLY),$(FUZZ_NAMES)))
$(BUILD)/fuzz/obj/%.o: %.c $(wildcard engine/*.h engine/cli/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
$(BUILD)/fuzz/obj/plugin/%.o: plugin/%.c $(PLUGIN_HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -DGLIB_DISABLE_DEPRECATION_WARNINGS \
	    $(shell pkg-config --cflags $(GIMP_PKGS)) -c $< -o $@
$(BUILD)/fuzz/fuzz_settings: tests/fuzz/fuzz_settings.c $(BUILD)/fuzz/obj/plugin/core.o \
                             $(BUILD)/fuzz/obj/plugin/pixels.o $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(shell pkg-config --cflags $(GIMP_PKGS)) \
	    $(filter-out %.h,$^) $(shell pkg-config --libs $(GIMP_PKGS)) $(FUZZ_LIBS) -o $@
$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz.h tests/test.h $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_OBJ) $(FUZZ_LIBS) -o $@
.PHONY: fuzz
fuzz: $(FUZZ_BIN)
	@for h in $(FUZZ_BIN); do n=$$(basename $$h); mkdir -p $(BUILD)/fuzz/corpus-$$n; \
	    echo "== $$n ($(FUZZ_SECONDS) s)"; \
	    $$h -max_total_time=$(FUZZ_SECONDS) -max_len=$$(case $$n in fuzz_weights) echo 131072;; \
	        *) echo 8192;; esac) -print_final_stats=1 \
	        $(BUILD)/fuzz/corpus-$$n tests/fuzz/corpus/$$n 2>$(BUILD)/fuzz/$$n.log || \
	        { tail -n 40 $(BUILD)/fuzz/$$n.log; exit 1; }; \
	    grep -E '^stat::number_of_executed_units' $(BUILD)/fuzz/$$n.log; done

# Every C file of the project, in one format (.clang-format); CI runs
# format-check, which fails on a file make format would change.
FORMAT_SRC := $(wildcard engine/*.c engine/*.h engine/cli/*.c plugin/*.c plugin/*.h tests/*.c \
                         tests/*.h tests/gimp/*.c tests/fuzz/*.c tests/bench/*.c tests/bench/*.h)
.PHONY: format-check
format:
	clang-format -i $(FORMAT_SRC)
format-check:
	clang-format --dry-run -Werror $(FORMAT_SRC)

clean:
	rm -rf build build-san build-gimp3

# ---------------------------------------------------------------- default model
# models/train: the recipe of the bundled model (PyTorch + numpy, Debian's
# python3-torch / python3-numpy). `make model` runs (or resumes) the shipped
# model's recipe, models/train/recipe.sh, in models/train/runs/base (its UNet
# stage wants a GPU: models/train/gpu.sh, MODEL_CARD.md) and re-exports
# models/default; `make bench-adherence` tests
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
	nice -n 19 sh models/train/recipe.sh $(PYTHON)
