/*
 * test_plugin.c -- loading allocators from shared objects and resolving allocator names.
 *
 * Every deliberately broken plugin in tests/plugin/bad_*.c must be refused with its own status
 * and a message that names the path and the defect; so must a path that does not exist and a
 * file that is not a shared object. The example plugin must load, validate and run. Entry
 * validation (ks_entry_validate) and ks_caps_describe are tested directly on crafted entries, one
 * defect at a time, with the valid entry they start from passing first so that each refusal is
 * caused by the defect and nothing else.
 */
#include <criterion/criterion.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "catalogue.h"

#define PLUGIN_DIR KS_BUILD_DIR "/lib/plugins"
#define PLUGIN_PATH(name) PLUGIN_DIR "/" name ".so"

typedef struct load_result {
    NTSTATUS status;
    ks_plugin *plugin;
    ks_error err;
} load_result;

static load_result load(const char *path)
{
    load_result result;
    memset(&result, 0, sizeof result);
    result.plugin = (ks_plugin *)&result; /* must be reset to NULL on failure */
    ks_error_clear(&result.err);
    result.status = ks_plugin_load(path, &result.plugin, &result.err);
    return result;
}

/* The load failed with status, left no plugin, and the message names the path and every needle. */
static void expect_refused(const char *path, NTSTATUS status, const char *const *needles, size_t needle_count)
{
    load_result result = load(path);
    if (NT_SUCCESS(result.status))
        ks_plugin_unload(result.plugin);
    cr_assert_eq(result.status, status, "%s: status %s, expected %s (message: %s)", path,
                 ks_status_name(result.status), ks_status_name(status), result.err.message);
    cr_assert_eq(result.err.status, status, "%s: the ks_error carries %s", path, ks_status_name(result.err.status));
    cr_assert_null(result.plugin, "%s: a failed load returned a plugin", path);
    cr_assert_not_null(strstr(result.err.message, path), "%s: message does not name the path: %s", path,
                       result.err.message);
    for (size_t index = 0; index < needle_count; index++)
        cr_assert_not_null(strstr(result.err.message, needles[index]), "%s: message lacks '%s': %s", path,
                           needles[index], result.err.message);
}

#define EXPECT_REFUSED(path, status, ...)                                                                              \
    do {                                                                                                               \
        const char *const needles_[] = {__VA_ARGS__};                                                                  \
        expect_refused((path), (status), needles_, sizeof needles_ / sizeof needles_[0]);                             \
    } while (0)

/* ---- Broken plugins --------------------------------------------------------------------------- */

Test(plugin, bad_abi_version_is_a_revision_mismatch)
{
    char expected[64];
    snprintf(expected, sizeof expected, "abi_version is %u", KSALLOC_ABI_VERSION + 1);
    char host[64];
    snprintf(host, sizeof host, "host speaks ABI %u", KSALLOC_ABI_VERSION);
    EXPECT_REFUSED(PLUGIN_PATH("bad_abi_version"), STATUS_REVISION_MISMATCH, expected, host);
}

Test(plugin, null_dispatch_member_is_named)
{
    EXPECT_REFUSED(PLUGIN_PATH("bad_null_member"), STATUS_INVALID_IMAGE_FORMAT, "dispatch->Free is NULL",
                   "bad_null_member");
}

Test(plugin, missing_entry_symbol_is_named)
{
    EXPECT_REFUSED(PLUGIN_PATH("bad_no_symbol"), STATUS_ENTRYPOINT_NOT_FOUND, "no symbol 'ksalloc_plugin_entry'",
                   "KSALLOC_PLUGIN");
}

Test(plugin, entry_function_returning_null_is_refused)
{
    EXPECT_REFUSED(PLUGIN_PATH("bad_null_entry"), STATUS_INVALID_IMAGE_FORMAT, "ksalloc_plugin_entry(",
                   "returned NULL");
}

Test(plugin, bad_name_is_quoted_with_the_offending_character)
{
    EXPECT_REFUSED(PLUGIN_PATH("bad_name"), STATUS_INVALID_IMAGE_FORMAT, "'bad name!'", "0x20", "offset 3",
                   "[A-Za-z0-9_-]");
}

Test(plugin, missing_file_is_object_name_not_found)
{
    EXPECT_REFUSED(PLUGIN_DIR "/no_such_plugin.so", STATUS_OBJECT_NAME_NOT_FOUND, "cannot load",
                   "No such file");
}

Test(plugin, file_that_is_not_a_shared_object_is_an_invalid_image)
{
    char path[] = "/tmp/ksalloc-not-a-plugin-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char text[] = "this is a text file, not an ELF shared object\n";
    cr_assert_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    load_result result = load(path);
    unlink(path);
    cr_assert_eq(result.status, STATUS_INVALID_IMAGE_FORMAT, "status %s: %s", ks_status_name(result.status),
                 result.err.message);
    cr_assert_null(result.plugin);
    cr_assert_not_null(strstr(result.err.message, path), "message does not name the path: %s", result.err.message);
    cr_assert_not_null(strstr(result.err.message, "cannot load"), "%s", result.err.message);
}

Test(plugin, empty_and_null_paths_are_invalid_parameters)
{
    ks_plugin *plugin = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_plugin_load("", &plugin, &err), STATUS_INVALID_PARAMETER);
    cr_assert_null(plugin);
    cr_assert_eq(ks_plugin_load(NULL, &plugin, &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "no path"), "%s", err.message);
}

/* ---- The example plugin ----------------------------------------------------------------------- */

static KSALLOCATOR_FRAMING framing_of(ULONG frames, ULONG frame_bytes, ULONG align_mask)
{
    KSALLOCATOR_FRAMING framing;
    memset(&framing, 0, sizeof framing);
    framing.Frames = frames;
    framing.FrameSize = frame_bytes;
    framing.FileAlignment = align_mask;
    return framing;
}

Test(plugin, example_loads_and_runs)
{
    load_result result = load(PLUGIN_PATH("example_plugin"));
    cr_assert_eq(result.status, STATUS_SUCCESS, "%s", result.err.message);
    const ks_allocator_entry *entry = ks_plugin_entry(result.plugin);
    cr_assert_str_eq(entry->name, "example-bitmap");
    cr_assert_eq(entry->caps, KS_CAP_BOUNDED | KS_CAP_GUARANTEED);
    cr_assert_not_null(entry->self_check);
    cr_assert_not_null(entry->counters);
    cr_assert_eq(entry->struct_bytes, sizeof(ks_allocator_entry));

    KSPIN pin;
    memset(&pin, 0, sizeof pin);
    pin.abi_version = KSALLOC_ABI_VERSION;
    pin.name = "pin0";
    KSALLOCATOR_FRAMING framing = framing_of(70, 100, 63); /* 70 frames: two bitmap words, a partial tail */
    void *context = NULL;
    cr_assert_eq(entry->dispatch->InitializeAllocator(&pin, &framing, &context), STATUS_SUCCESS);
    void *frames[70];
    for (size_t index = 0; index < 70; index++) {
        frames[index] = entry->dispatch->Allocate(context);
        cr_assert_not_null(frames[index], "frame %zu of 70", index);
        cr_assert_eq((uintptr_t)frames[index] % 64, 0);
        memset(frames[index], (int)index, 100);
    }
    cr_assert_null(entry->dispatch->Allocate(context), "frame 71 of a 70-frame pool (a tail bit was handed out)");
    char why[256] = "";
    cr_assert_eq(entry->self_check(context, why, sizeof why), STATUS_SUCCESS, "%s", why);
    entry->dispatch->Free(context, frames[69]);
    cr_assert_eq(entry->dispatch->Allocate(context), frames[69], "the only free frame comes back");
    entry->dispatch->Free(context, (char *)frames[3] + 1); /* not a frame start: ignored, reported */
    cr_assert_neq(entry->self_check(context, why, sizeof why), STATUS_SUCCESS);
    cr_assert_not_null(strstr(why, "not live"), "%s", why);
    entry->dispatch->DeleteAllocator(context); /* 70 frames live: the block goes */
    ks_plugin_unload(result.plugin);
}

Test(plugin, name_without_a_slash_is_a_file_in_the_working_directory)
{
    cr_assert_eq(chdir(PLUGIN_DIR), 0, "chdir %s", PLUGIN_DIR);
    load_result result = load("example_plugin.so");
    cr_assert_eq(result.status, STATUS_SUCCESS, "%s", result.err.message);
    ks_plugin_unload(result.plugin);
}

/* ---- Resolving names -------------------------------------------------------------------------- */

Test(resolve, builtin_names_resolve_without_a_plugin)
{
    for (size_t index = 0; index < ks_catalogue_count(); index++) {
        const ks_allocator_entry *entry = NULL;
        ks_plugin *plugin = (ks_plugin *)&entry;
        ks_error err;
        ks_error_clear(&err);
        const char *name = ks_catalogue_at(index)->name;
        cr_assert_eq(ks_allocator_resolve(name, &entry, &plugin, &err), STATUS_SUCCESS, "%s: %s", name, err.message);
        cr_assert_eq(entry, ks_catalogue_at(index), "%s", name);
        cr_assert_null(plugin, "%s: a built-in came back with a plugin", name);
    }
}

Test(resolve, plugin_prefix_loads_the_plugin)
{
    const ks_allocator_entry *entry = NULL;
    ks_plugin *plugin = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_allocator_resolve("plugin:" PLUGIN_PATH("example_plugin"), &entry, &plugin, &err),
                 STATUS_SUCCESS, "%s", err.message);
    cr_assert_not_null(plugin);
    cr_assert_eq(entry, ks_plugin_entry(plugin));
    cr_assert_str_eq(entry->name, "example-bitmap");
    ks_plugin_unload(plugin);

    cr_assert_eq(ks_allocator_resolve("plugin:" PLUGIN_PATH("bad_null_member"), &entry, &plugin, &err),
                 STATUS_INVALID_IMAGE_FORMAT, "%s", err.message);
    cr_assert_null(entry);
    cr_assert_null(plugin);
}

Test(resolve, unknown_name_lists_the_known_ones)
{
    const ks_allocator_entry *entry = NULL;
    ks_plugin *plugin = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_allocator_resolve("poool", &entry, &plugin, &err), STATUS_OBJECT_NAME_NOT_FOUND);
    cr_assert_null(entry);
    cr_assert_null(plugin);
    cr_assert_not_null(strstr(err.message, "'poool'"), "%s", err.message);
    for (size_t index = 0; index < ks_catalogue_count(); index++)
        cr_assert_not_null(strstr(err.message, ks_catalogue_at(index)->name), "%s", err.message);
    cr_assert_not_null(strstr(err.message, "plugin:"), "%s", err.message);
}

/* ---- ks_entry_validate on crafted entries ------------------------------------------------------ */

static NTSTATUS crafted_initialize(PVOID pin, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)pin;
    (void)framing;
    (void)context;
    return STATUS_NOT_SUPPORTED;
}
static void crafted_delete(PVOID context)
{
    (void)context;
}
static PVOID crafted_allocate(PVOID context)
{
    (void)context;
    return NULL;
}
static void crafted_free(PVOID context, PVOID buffer)
{
    (void)context;
    (void)buffer;
}

static KSALLOCATOR_DISPATCH crafted_dispatch;

static ks_allocator_entry crafted_entry(void)
{
    crafted_dispatch = (KSALLOCATOR_DISPATCH){crafted_initialize, crafted_delete, crafted_allocate, crafted_free};
    ks_allocator_entry entry;
    memset(&entry, 0, sizeof entry);
    entry.abi_version = KSALLOC_ABI_VERSION;
    entry.struct_bytes = sizeof entry;
    entry.name = "crafted";
    entry.description = "a crafted entry";
    entry.dispatch = &crafted_dispatch;
    return entry;
}

static void expect_invalid(const ks_allocator_entry *entry, NTSTATUS status, const char *needle)
{
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_entry_validate(entry, "crafted origin", &err), status, "expected %s for '%s', got: %s",
                 ks_status_name(status), needle, err.message);
    cr_assert_not_null(strstr(err.message, "crafted origin"), "origin missing: %s", err.message);
    cr_assert_not_null(strstr(err.message, needle), "'%s' missing: %s", needle, err.message);
}

Test(catalogue, valid_crafted_entry_passes)
{
    ks_allocator_entry entry = crafted_entry();
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_entry_validate(&entry, "crafted origin", &err), STATUS_SUCCESS, "%s", err.message);
    /* Forward compatibility: an older entry that ends right after dispatch is still usable. */
    entry.struct_bytes = offsetof(ks_allocator_entry, dispatch) + sizeof entry.dispatch;
    cr_assert_eq(ks_entry_validate(&entry, "crafted origin", &err), STATUS_SUCCESS, "%s", err.message);
    char longest[64];
    memset(longest, 'n', 63);
    longest[63] = '\0';
    entry.name = longest; /* [A-Za-z0-9_-]{1,63}: 63 is still fine */
    cr_assert_eq(ks_entry_validate(&entry, "crafted origin", &err), STATUS_SUCCESS, "%s", err.message);
}

Test(catalogue, each_defect_is_refused_by_name)
{
    ks_allocator_entry entry;
    expect_invalid(NULL, STATUS_INVALID_IMAGE_FORMAT, "entry is NULL");

    entry = crafted_entry();
    entry.abi_version = 0;
    expect_invalid(&entry, STATUS_REVISION_MISMATCH, "abi_version is 0");

    entry = crafted_entry();
    entry.struct_bytes = offsetof(ks_allocator_entry, dispatch) + sizeof entry.dispatch - 1;
    expect_invalid(&entry, STATUS_REVISION_MISMATCH, "struct_bytes");

    char too_long[65];
    memset(too_long, 'n', 64);
    too_long[64] = '\0';
    const struct {
        const char *name;
        const char *needle;
    } bad_names[] = {{NULL, "name is NULL"},
                     {"", "name is empty"},
                     {too_long, "longer than 63"},
                     {"tab\there", "0x09"},
                     {"slash/name", "0x2F"},
                     {"caf\xc3\xa9", "0xC3"}};
    for (size_t index = 0; index < sizeof bad_names / sizeof bad_names[0]; index++) {
        entry = crafted_entry();
        entry.name = bad_names[index].name;
        expect_invalid(&entry, STATUS_INVALID_IMAGE_FORMAT, bad_names[index].needle);
    }

    entry = crafted_entry();
    entry.description = NULL;
    expect_invalid(&entry, STATUS_INVALID_IMAGE_FORMAT, "description is NULL");
    entry.description = "";
    expect_invalid(&entry, STATUS_INVALID_IMAGE_FORMAT, "description is empty");

    entry = crafted_entry();
    entry.dispatch = NULL;
    expect_invalid(&entry, STATUS_INVALID_IMAGE_FORMAT, "dispatch is NULL");
}

Test(catalogue, each_null_dispatch_member_is_named)
{
    const char *members[] = {"InitializeAllocator", "DeleteAllocator", "Allocate", "Free"};
    for (size_t index = 0; index < 4; index++) {
        ks_allocator_entry entry = crafted_entry();
        KSALLOCATOR_DISPATCH dispatch = crafted_dispatch;
        switch (index) {
        case 0: dispatch.InitializeAllocator = NULL; break;
        case 1: dispatch.DeleteAllocator = NULL; break;
        case 2: dispatch.Allocate = NULL; break;
        default: dispatch.Free = NULL; break;
        }
        entry.dispatch = &dispatch;
        char needle[64];
        snprintf(needle, sizeof needle, "dispatch->%s is NULL", members[index]);
        expect_invalid(&entry, STATUS_INVALID_IMAGE_FORMAT, needle);
    }
}

/* ---- ks_caps_describe ----------------------------------------------------------------------------- */

Test(catalogue, caps_describe)
{
    char buf[128];
    cr_assert_str_eq(ks_caps_describe(0, buf, sizeof buf), "none");
    cr_assert_str_eq(ks_caps_describe(KS_CAP_BOUNDED | KS_CAP_GUARANTEED, buf, sizeof buf), "bounded,guaranteed");
    cr_assert_str_eq(ks_caps_describe(0x3Fu, buf, sizeof buf),
                     "thread-safe,bounded,guaranteed,shared-heap,dma,any-size");
    cr_assert_str_eq(ks_caps_describe(KS_CAP_DMA | 0x100u, buf, sizeof buf), "dma,0x100");
    cr_assert_str_eq(ks_caps_describe(0x300u, buf, sizeof buf), "0x300");
    char small[8];
    memset(small, 'x', sizeof small);
    ks_caps_describe(0x3Fu, small, sizeof small);
    cr_assert_eq(strnlen(small, sizeof small), sizeof small - 1, "truncated but terminated");
    cr_assert_eq(strncmp(small, "thread-", 7), 0, "%s", small);
}
