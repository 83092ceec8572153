/*
 * cmd_list.c -- `ksalloc list`: the catalogue as a table, or as JSON for tools (--json).
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
    "usage: ksalloc list [--json] [--plugin PATH]...\n"
    "  --json         one JSON object per allocator, for tools\n"
    "  --plugin PATH  also load and list this plugin (repeatable)\n";

static void print_size(char *buf, size_t buf_bytes, size_t bytes)
{
    if (bytes == 0)
        snprintf(buf, buf_bytes, "-");
    else if (bytes % (1u << 20) == 0)
        snprintf(buf, buf_bytes, "%zuM", bytes >> 20);
    else if (bytes % (1u << 10) == 0)
        snprintf(buf, buf_bytes, "%zuK", bytes >> 10);
    else
        snprintf(buf, buf_bytes, "%zu", bytes);
}

static void print_entry(const ks_allocator_entry *entry, const char *origin, bool json)
{
    char caps[256], max_frame[32], max_align[32];
    ks_caps_describe(entry->caps, caps, sizeof caps);
    print_size(max_frame, sizeof max_frame, entry->max_frame_bytes);
    print_size(max_align, sizeof max_align, entry->max_align_bytes);
    if (json) {
        printf("{\"name\":\"%s\",\"origin\":\"%s\",\"caps\":\"%s\",\"max_frame_bytes\":%zu,"
               "\"max_align_bytes\":%zu,\"self_check\":%s,\"description\":\"",
               entry->name, origin, caps, entry->max_frame_bytes, entry->max_align_bytes,
               entry->self_check ? "true" : "false");
        for (const char *c = entry->description; *c; c++) {
            if (*c == '"' || *c == '\\')
                putchar('\\');
            if ((unsigned char)*c >= 0x20)
                putchar(*c);
        }
        printf("\"}\n");
        return;
    }
    printf("%-12s %-44s %-9s %-9s %-5s %s\n", entry->name, caps, max_frame, max_align,
           entry->self_check ? "yes" : "no", entry->description);
}

int ks_cmd_list(int argc, char **argv)
{
    static const struct option options[] = {
        {"json", no_argument, NULL, 'j'}, {"plugin", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    bool json = false;
    const char *plugins[16];
    size_t plugin_count = 0;
    opterr = 0;
    optind = 1;
    for (int opt; (opt = getopt_long(argc, argv, ":", options, NULL)) != -1;) {
        switch (opt) {
        case 'j': json = true; break;
        case 'p':
            if (plugin_count == sizeof plugins / sizeof plugins[0])
                return ks_cli_usage_error("list", usage, "--plugin: at most 16 plugins");
            plugins[plugin_count++] = optarg;
            break;
        case 'h': fputs(usage, stdout); return KS_EXIT_CLEAN;
        case ':': return ks_cli_usage_error("list", usage, "%s needs a value", argv[optind - 1]);
        default: return ks_cli_usage_error("list", usage, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return ks_cli_usage_error("list", usage, "unexpected argument '%s'", argv[optind]);

    if (!json)
        printf("%-12s %-44s %-9s %-9s %-5s %s\n", "NAME", "CAPABILITIES", "MAX_FRAME", "MAX_ALIGN", "CHECK",
               "DESCRIPTION");
    for (size_t i = 0; i < ks_catalogue_count(); i++)
        print_entry(ks_catalogue_at(i), "built-in", json);
    int exit_code = KS_EXIT_CLEAN;
    for (size_t i = 0; i < plugin_count; i++) {
        ks_plugin *plugin = NULL;
        ks_error err;
        ks_error_clear(&err);
        if (!NT_SUCCESS(ks_plugin_load(plugins[i], &plugin, &err))) {
            fprintf(stderr, "ksalloc list: %s\n", err.message);
            exit_code = KS_EXIT_ERROR;
            continue;
        }
        print_entry(ks_plugin_entry(plugin), plugins[i], json);
        ks_plugin_unload(plugin);
    }
    return exit_code;
}
