/* snnpack_decode PACK OUTDIR: validate an snnc weight pack and write, into the existing
 * directory OUTDIR, one raw little-endian file per ONNX initializer it fills and
 * OUTDIR/manifest.json, a list of {"name", "dtype", "shape", "file"}. The arrays are the
 * ones snnc.runtime.pack_arrays gives; docs/deployment.md shows how an app hands them to
 * ONNX Runtime. Build: cc -std=c99 -O2 -o snnpack_decode snnpack_decode.c snnpack.c
 * Exit status: 0 written, 1 the pack is invalid or a file could not be read or written,
 * 2 wrong usage. */
#include "snnpack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PACK ((size_t)1 << 34) /* 16 GiB: larger inputs are refused before reading */

static int fail(const char *what, const char *path) {
    fprintf(stderr, "snnpack_decode: %s%s%s\n", what, path ? ": " : "", path ? path : "");
    return 1;
}

static uint8_t *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long end;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) || (end = ftell(f)) < 0 || (size_t)end > MAX_PACK ||
        fseek(f, 0, SEEK_SET)) {
        fclose(f);
        return NULL;
    }
    *size = (size_t)end;
    buf = (uint8_t *)malloc(*size ? *size : 1);
    if (buf && fread(buf, 1, *size, f) != *size) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

/* A file name for initializer i: its index, then its name with what a file system might
 * read specially (/, \, .., control characters, quotes) as '_'. */
static void file_name(char *out, size_t cap, uint32_t i, const snnpack_layer *l) {
    size_t n = (size_t)snprintf(out, cap, "%04u_", (unsigned)i), k;
    for (k = 0; k < l->name_len && n + 5 < cap; k++) {
        unsigned char c = (unsigned char)l->name[k];
        int plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || (c == '.' && n > 5);
        out[n++] = plain ? (char)c : '_';
    }
    memcpy(out + n, ".bin", 5);
}

static void json_string(FILE *f, const char *s, uint32_t len) {
    uint32_t k;
    fputc('"', f);
    for (k = 0; k < len; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static int write_all(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(data, 1, size, f) == size;
    if (f && fclose(f)) ok = 0;
    return ok;
}

int main(int argc, char **argv) {
    uint8_t *pack;
    size_t size = 0, dir_len;
    uint32_t count, i;
    snnpack_error err;
    char path[4096], name[300];
    FILE *manifest;
    if (argc != 3) {
        fprintf(stderr, "usage: snnpack_decode PACK OUTDIR (an existing directory)\n");
        return 2;
    }
    dir_len = strlen(argv[2]);
    if (dir_len + 320 > sizeof path) return fail("the output directory's path is too long", argv[2]);
    pack = read_file(argv[1], &size);
    if (!pack) return fail("cannot read the pack (missing, unreadable or over 16 GiB)", argv[1]);
    if (snnpack_check(pack, size, &count, &err)) {
        fprintf(stderr, "snnpack_decode: %s is not a valid snnc weight pack: %s (byte %llu); "
                "recompile the model with `snnc compile MODEL --pack PACK.snnpack`\n", argv[1],
                err.message, (unsigned long long)err.offset);
        free(pack);
        return 1;
    }
    snprintf(path, sizeof path, "%s/manifest.json", argv[2]);
    manifest = fopen(path, "wb");
    if (!manifest) {
        free(pack);
        return fail("cannot write manifest.json in the output directory (does it exist?)", argv[2]);
    }
    fputs("[", manifest);
    for (i = 0; i < count; i++) {
        snnpack_layer l;
        snnpack_tensor t;
        void *out;
        int d;
        snnpack_layer_at(pack, size, i, &l);
        snnpack_tensor_of(&l, &t);
        out = malloc(t.bytes ? (size_t)t.bytes : 1);
        if (!out || snnpack_decode(&l, out, (size_t)t.bytes, &err)) {
            free(out);
            fclose(manifest);
            free(pack);
            return fail("out of memory decoding a layer", argv[1]);
        }
        file_name(name, sizeof name, i, &l);
        snprintf(path, sizeof path, "%s/%s", argv[2], name);
        if (!write_all(path, out, (size_t)t.bytes)) {
            free(out);
            fclose(manifest);
            free(pack);
            return fail("cannot write", path);
        }
        free(out);
        fputs(i ? ",\n {\"name\": " : "\n {\"name\": ", manifest);
        json_string(manifest, l.name, l.name_len);
        fprintf(manifest, ", \"dtype\": \"%s\", \"shape\": [", snnpack_dtype_name(t.dtype));
        for (d = 0; d < t.ndim; d++)
            fprintf(manifest, "%s%llu", d ? ", " : "", (unsigned long long)t.dims[d]);
        fprintf(manifest, "], \"file\": \"%s\"}", name);
    }
    fputs("\n]\n", manifest);
    free(pack);
    if (fclose(manifest)) return fail("cannot write manifest.json in", argv[2]);
    return 0;
}
