/*
 * fuzz_plugin_entry.c -- plugin metadata, the catalogue entry a plugin hands the host: bytes
 * become a ks_allocator_entry whose fields and strings are fuzzed (ABI version, struct_bytes,
 * name and description -- NULL, empty, long, any bytes --, caps, limits, a dispatch table that
 * is NULL or lacks members, an optional bare hook that may lack either function), then ks_entry_validate judges it, as ks_plugin_load does.
 *
 * Checks: validation never crashes or reads a string past its terminator (the strings live in
 * exactly-sized heap buffers, so ASan sees an over-read); it accepts exactly the entries that
 * are valid by an independent statement of the rules in catalogue.h (ABI version, struct_bytes
 * covering everything up to dispatch, a name of 1 to 63 characters of [A-Za-z0-9_-], a
 * non-empty description, all four dispatch members, a bare hook -- where struct_bytes covers
 * it -- either absent or with both functions); a refusal is an error status with a
 * message naming the origin. ks_caps_describe of the fuzzed caps always terminates its output,
 * even in a buffer one byte long.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_helpers.h"

#define ENTRY_NAME_MAX_BYTES 63u
#define ORIGIN "plugin fuzz-input.so"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    ks_fuzz_set_identity("fuzz_plugin_entry", NULL);
    return 0;
}

/* Never called: validation only looks at whether the members are there. */
static NTSTATUS stub_initialize(PVOID pin, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)pin;
    (void)framing;
    (void)context;
    return STATUS_NOT_SUPPORTED;
}
static void stub_delete(PVOID context)
{
    (void)context;
}
static PVOID stub_allocate(PVOID context)
{
    (void)context;
    return NULL;
}
static void stub_free(PVOID context, PVOID frame)
{
    (void)context;
    (void)frame;
}

/* A string of the next length byte's worth of input bytes, in a buffer of exactly that length
 * plus its terminator; NULL when the selector byte says so. */
static char *decode_string(ks_byte_reader *reader)
{
    uint8_t selector = ks_reader_u8(reader);
    if (selector == 0xFF)
        return NULL;
    size_t length = selector < 0x80 ? selector % 16u : selector; /* mostly short, sometimes past 63 */
    char *text = malloc(length + 1);
    KS_FUZZ_CHECK(text != NULL, "out of memory");
    for (size_t i = 0; i < length; i++)
        text[i] = (char)ks_reader_u8(reader);
    text[length] = '\0'; /* an embedded NUL just makes the string shorter */
    return text;
}

static bool name_valid(const char *name)
{
    if (name == NULL)
        return false;
    size_t length = strlen(name);
    if (length == 0 || length > ENTRY_NAME_MAX_BYTES)
        return false;
    for (size_t i = 0; i < length; i++) {
        char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static bool entry_valid(const ks_allocator_entry *entry)
{
    size_t minimum_bytes = offsetof(ks_allocator_entry, dispatch) + sizeof entry->dispatch;
    const KSALLOCATOR_DISPATCH *dispatch = entry->dispatch;
    return entry->abi_version == KSALLOC_ABI_VERSION && entry->struct_bytes >= minimum_bytes &&
           name_valid(entry->name) && entry->description != NULL && entry->description[0] != '\0' && dispatch &&
           dispatch->InitializeAllocator && dispatch->DeleteAllocator && dispatch->Allocate && dispatch->Free &&
           (entry->struct_bytes < offsetof(ks_allocator_entry, bare) + sizeof entry->bare || entry->bare == NULL ||
            (entry->bare->allocate != NULL && entry->bare->free != NULL));
}

static void *stub_bare_allocate(size_t frame_bytes, size_t align_bytes)
{
    (void)frame_bytes;
    (void)align_bytes;
    return NULL;
}

static void stub_bare_free(void *frame, size_t frame_bytes, size_t align_bytes)
{
    (void)frame;
    (void)frame_bytes;
    (void)align_bytes;
}

/* members: bits 0-3 drop a dispatch function, bit 4 the dispatch table; bit 5 adds a bare hook,
 * bits 6 and 7 drop its allocate and free. */
static void decode_entry(ks_byte_reader *reader, ks_allocator_entry *entry, KSALLOCATOR_DISPATCH *dispatch,
                         ks_bare_ops *bare)
{
    uint8_t shape = ks_reader_u8(reader);
    memset(entry, 0, sizeof *entry);
    entry->abi_version = (shape & 0x01) ? ks_reader_u32(reader) : KSALLOC_ABI_VERSION;
    entry->struct_bytes = (shape & 0x02) ? ks_reader_below(reader, sizeof *entry + 16) : (ULONG)sizeof *entry;
    entry->caps = ks_reader_u32(reader);
    entry->max_frame_bytes = ks_reader_u32(reader);
    entry->max_align_bytes = ks_reader_u32(reader);
    uint8_t members = ks_reader_u8(reader);
    *dispatch = (KSALLOCATOR_DISPATCH){
        .InitializeAllocator = (members & 0x01) ? NULL : stub_initialize,
        .DeleteAllocator = (members & 0x02) ? NULL : stub_delete,
        .Allocate = (members & 0x04) ? NULL : stub_allocate,
        .Free = (members & 0x08) ? NULL : stub_free,
    };
    entry->dispatch = (members & 0x10) ? NULL : dispatch;
    *bare = (ks_bare_ops){.allocate = (members & 0x40) ? NULL : stub_bare_allocate,
                          .free = (members & 0x80) ? NULL : stub_bare_free};
    entry->bare = (members & 0x20) ? bare : NULL;
    entry->name = decode_string(reader);
    entry->description = decode_string(reader);
}

static void check_caps_describe(ULONG caps, size_t buf_bytes)
{
    char *buf = malloc(buf_bytes);
    KS_FUZZ_CHECK(buf != NULL, "out of memory");
    memset(buf, 'x', buf_bytes);
    const char *out = ks_caps_describe(caps, buf, buf_bytes);
    KS_FUZZ_CHECK(out == buf && memchr(buf, '\0', buf_bytes) != NULL,
                  "ks_caps_describe(0x%x) left a %zu-byte buffer unterminated", (unsigned)caps, buf_bytes);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ks_byte_reader reader = {.data = data, .size_bytes = size, .offset = 0};
    ks_allocator_entry entry;
    KSALLOCATOR_DISPATCH dispatch;
    ks_bare_ops bare;
    decode_entry(&reader, &entry, &dispatch, &bare);
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = ks_entry_validate(&entry, ORIGIN, &err);
    bool expected = entry_valid(&entry);
    KS_FUZZ_CHECK(NT_SUCCESS(status) == expected, "ks_entry_validate %s an entry that is %s (name '%s'): %s",
                  NT_SUCCESS(status) ? "accepted" : "refused", expected ? "valid" : "invalid",
                  entry.name ? entry.name : "(null)", err.message);
    if (!NT_SUCCESS(status))
        KS_FUZZ_CHECK(strstr(err.message, ORIGIN) != NULL, "the refusal does not name its origin: '%s'", err.message);
    check_caps_describe(entry.caps, 1 + ks_reader_below(&reader, 64));
    free((char *)entry.name);
    free((char *)entry.description);
    return 0;
}
