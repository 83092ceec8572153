/*
 * mutant_double_handout.c -- a deliberately broken plugin for the CLI tests: a pool that, at its
 * 10th allocation, hands out the most recently allocated frame again while it may still be live.
 * `ksalloc run --plugin` must report it as a double-handout fault and exit 1.
 */
#include <stdlib.h>

#include "ksalloc.h"

typedef struct mutant {
    unsigned char *block;
    size_t stride_bytes;
    ULONG frames;
    ULONG next_unused;
    void **free_list;
    ULONG free_count;
    void *last_frame;
    unsigned long allocations;
} mutant;

static NTSTATUS mutant_init(PVOID pin, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)pin;
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    mutant *m = calloc(1, sizeof *m);
    if (m == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (framing->Frames == 0)
        framing->Frames = 64;
    if (framing->FrameSize == 0)
        framing->FrameSize = 4096;
    size_t align_bytes = ks_framing_align_bytes(framing);
    if (align_bytes < sizeof(void *))
        align_bytes = sizeof(void *);
    m->stride_bytes = (framing->FrameSize + align_bytes - 1) / align_bytes * align_bytes;
    m->frames = framing->Frames;
    m->block = aligned_alloc(align_bytes, m->stride_bytes * m->frames);
    m->free_list = calloc(m->frames, sizeof *m->free_list);
    if (m->block == NULL || m->free_list == NULL) {
        free(m->block);
        free(m->free_list);
        free(m);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    *context = m;
    return STATUS_SUCCESS;
}

static void mutant_delete(PVOID context)
{
    mutant *m = context;
    free(m->block);
    free(m->free_list);
    free(m);
}

static PVOID mutant_allocate(PVOID context)
{
    mutant *m = context;
    if (++m->allocations == 10 && m->last_frame != NULL)
        return m->last_frame; /* the bug: no check that it is still live */
    void *frame = NULL;
    if (m->free_count > 0)
        frame = m->free_list[--m->free_count];
    else if (m->next_unused < m->frames)
        frame = m->block + m->stride_bytes * m->next_unused++;
    if (frame != NULL)
        m->last_frame = frame;
    return frame;
}

static void mutant_free(PVOID context, PVOID frame)
{
    mutant *m = context;
    if (m->free_count < m->frames)
        m->free_list[m->free_count++] = frame;
}

static const KSALLOCATOR_DISPATCH mutant_dispatch = {mutant_init, mutant_delete, mutant_allocate, mutant_free};

static const ks_allocator_entry mutant_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_double_handout",
    .description = "broken on purpose: hands out a recent frame again at the 10th allocation",
    .caps = KS_CAP_BOUNDED,
    .dispatch = &mutant_dispatch,
};

KSALLOC_PLUGIN(mutant_entry)
