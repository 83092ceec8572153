/*
 * fuzz_allocator.c -- one libFuzzer target per catalogued allocator, with no per-allocator code:
 * fuzz/fuzz.mk compiles this file once per catalogue name with -DKS_FUZZ_ALLOCATOR='"name"' into
 * fuzz_alloc_<name>.
 *
 * Checks: every op sequence the decoder can express -- up to four pins of mixed framings (frame
 * sizes from 0 to 1 MiB, alignments to a page, MUST_ALLOCATE or not), pins sharing one heap
 * where the allocator supports it, allocate / free the k-th live frame / touch -- run through the
 * verifier, which aborts on the first fault of any kind it knows (capacity promised but NULL,
 * over capacity, misalignment, double hand-out, short or overlapping frames, corruption of a
 * live frame, bad free, leak at DeleteAllocator, a failing self-check, run after every op).
 * A KS_CAP_DMA allocator gets the engine's emulated DMA device and the decoder's DMA ops
 * (capture, render, loopback) like any run does.
 * The input format is the allocator format of fuzz_helpers.h, so any crash replays with
 * `ksalloc replay --fuzz-input FILE --allocator NAME`.
 */
#include "fuzz_helpers.h"

#ifndef KS_FUZZ_ALLOCATOR
#error "build with -DKS_FUZZ_ALLOCATOR='\"name\"' (fuzz/fuzz.mk does, once per catalogue entry)"
#endif

static const ks_allocator_entry *fuzzed_entry;

/* Resolved once: the catalogue is constant, so this is not state carried between inputs. */
static const ks_allocator_entry *resolve_entry(void)
{
    const ks_allocator_entry *entry = ks_catalogue_find(KS_FUZZ_ALLOCATOR);
    KS_FUZZ_CHECK(entry != NULL,
                  "no catalogue entry is named '%s': fuzz.mk takes the names from the table in "
                  "harness/catalogue.c (&ks_allocator_<name>), so an entry's name must equal its variable's suffix",
                  KS_FUZZ_ALLOCATOR);
    return entry;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    ks_fuzz_set_identity("fuzz_alloc_" KS_FUZZ_ALLOCATOR, KS_FUZZ_ALLOCATOR);
    fuzzed_entry = resolve_entry();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzzed_entry == NULL) /* a driver that skips LLVMFuzzerInitialize */
        fuzzed_entry = resolve_entry();
    ks_fuzz_run_allocator_input(data, size, fuzzed_entry);
    return 0;
}
