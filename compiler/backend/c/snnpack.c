/* snnpack.c: see snnpack.h. C99, no dependencies, no allocation. The checks follow
 * snnc.backend.pack.decode (docs/binary_format.md, "What the reader checks"). */
#include "snnpack.h"

#include <stdio.h>
#include <string.h>

#define HEADER 64u
#define ENTRY 72u
#define ALIGN 64u

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }
static uint64_t align_up(uint64_t n) { return n + (ALIGN - n % ALIGN) % ALIGN; }

static int refuse(snnpack_error *err, uint64_t offset, const char *what, long layer) {
    if (err) {
        if (layer >= 0)
            snprintf(err->message, sizeof err->message, "%s (layer %ld)", what, layer);
        else
            snprintf(err->message, sizeof err->message, "%s", what);
        err->offset = offset;
    }
    return -1;
}

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, uint64_t n) {
    uint32_t table[256];
    uint32_t i, k;
    for (i = 0; i < 256; i++) {
        uint32_t c = i;
        for (k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    crc = ~crc;
    while (n--) crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* CRC-32 of the file with the checksum word (version 1: and the reserved word) as zeros. */
static uint32_t pack_crc(const uint8_t *pack, size_t size, int version) {
    static const uint8_t zeros[8] = {0};
    uint64_t hole = version == 1 ? 8 : 4;
    uint32_t crc = crc32_update(0, pack, 56);
    crc = crc32_update(crc, zeros, hole);
    return crc32_update(crc, pack + 56 + hole, size - 56 - hole);
}

static int all_zero(const uint8_t *pack, uint64_t start, uint64_t end, uint64_t *where) {
    uint64_t i;
    for (i = start; i < end; i++)
        if (pack[i]) { *where = i; return 0; }
    return 1;
}

/* Strict UTF-8, as Python's bytes.decode(): no overlong forms, surrogates or > U+10FFFF. */
static int utf8_valid(const uint8_t *s, uint64_t n) {
    uint64_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        uint32_t cp;
        int more, k;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { more = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { more = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { more = 3; cp = c & 0x07; }
        else return 0;
        if (n - i <= (uint64_t)more) return 0;
        for (k = 1; k <= more; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((more == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (more == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += (uint64_t)more + 1;
    }
    return 1;
}

typedef struct {
    uint64_t strings, data; /* cursors: the next name's offset, the next layer's data */
} cursor_t;

static int bits_ok(int scheme, int bits) {
    switch (scheme) {
    case SNNPACK_UNIFORM: return bits >= 2 && bits <= 8;
    case SNNPACK_POT: return bits >= 2 && bits <= 5;
    case SNNPACK_TERNARY: return bits == 2;
    default: return bits == 1; /* binary */
    }
}

/* Bytes of n codes: ceil(n * k / 8); ternary five trits a byte, ceil(n / 5). */
static uint64_t codes_bytes(uint64_t n, int scheme, int bits) {
    return scheme == SNNPACK_TERNARY ? (n + 4) / 5 : (n * (uint64_t)bits + 7) / 8;
}

/* The names of entry i, checked: next in the string table, UTF-8, not used before. */
static int check_names(const uint8_t *pack, uint64_t strings_at, uint64_t strsize,
                       uint64_t base, uint32_t i, cursor_t *cur, snnpack_error *err) {
    uint64_t at = cur->strings, name_len = rd32(pack + base + 4);
    uint64_t sname_len = rd32(pack + base + 12);
    int layout = pack[base + 19];
    uint32_t j;
    const uint8_t *names[2];
    uint64_t lens[2];
    int n;
    if (rd32(pack + base) != at) return refuse(err, base, "name offset is not right after the previous names", i);
    if (name_len < 1 || name_len > strsize - at) return refuse(err, base + 4, "name length is not 1 or more inside the string table", i);
    if (rd32(pack + base + 8) != at + name_len) return refuse(err, base + 8, "scale-name offset is not right after the name", i);
    if ((sname_len >= 1) != (layout == SNNPACK_LEVELS) || sname_len > strsize - at - name_len)
        return refuse(err, base + 12, "scale-name length must be 1 or more for layout 0, 0 otherwise", i);
    names[0] = pack + strings_at + at;
    lens[0] = name_len;
    names[1] = names[0] + name_len;
    lens[1] = sname_len;
    for (n = 0; n < 2; n++) {
        if (!utf8_valid(names[n], lens[n]))
            return refuse(err, (uint64_t)(names[n] - pack), "a name is not UTF-8", i);
        if (!lens[n]) continue;
        /* not used before: the names and scale names of earlier entries, and this name */
        for (j = 0; j <= i; j++) {
            uint64_t b = HEADER + (uint64_t)ENTRY * j, o = rd32(pack + b), l = rd32(pack + b + 4);
            uint64_t so = rd32(pack + b + 8), sl = rd32(pack + b + 12);
            int dup = 0;
            if (j < i) {
                dup = (l == lens[n] && !memcmp(pack + strings_at + o, names[n], (size_t)l)) ||
                      (sl == lens[n] && sl && !memcmp(pack + strings_at + so, names[n], (size_t)sl));
            } else if (n == 1) {
                dup = lens[0] == lens[1] && !memcmp(names[0], names[1], (size_t)lens[1]);
            }
            if (dup) return refuse(err, (uint64_t)(names[n] - pack), "a name is used twice", i);
        }
    }
    cur->strings = at + name_len + sname_len;
    return 0;
}

static int check_entry(const uint8_t *pack, uint64_t strings_at, uint64_t strsize,
                       uint64_t data_at, uint64_t data_size, uint32_t i, cursor_t *cur,
                       int version, snnpack_error *err) {
    uint64_t base = HEADER + (uint64_t)ENTRY * i, count = 1, codes_at, codes_size, scales_at, w;
    int scheme = pack[base + 16], bits = pack[base + 17], ndim = pack[base + 18];
    int layout = pack[base + 19], d;
    uint32_t dims[SNNPACK_MAX_DIMS];
    if (check_names(pack, strings_at, strsize, base, i, cur, err)) return -1;
    if (scheme > SNNPACK_BINARY || (scheme >= SNNPACK_TERNARY && version < 3))
        return refuse(err, base + 16, "scheme is not 0 (uniform), 1 (pot), 2 (ternary) or 3 (binary; 2 and 3 from version 3 on)", i);
    if (!bits_ok(scheme, bits)) return refuse(err, base + 17, "bits are not 2..8 (uniform), 2..5 (pot), 2 (ternary) or 1 (binary)", i);
    if (layout > SNNPACK_GEMM || (layout == SNNPACK_CODES && scheme != SNNPACK_POT))
        return refuse(err, base + 19, "layout is not 0, 1 (pot only), 2 or 3", i);
    if (ndim < 2 || ndim > SNNPACK_MAX_DIMS) return refuse(err, base + 18, "ndim is not 2..6", i);
    for (d = 0; d < SNNPACK_MAX_DIMS; d++) {
        dims[d] = rd32(pack + base + 20 + 4 * (uint64_t)d);
        if ((dims[d] >= 1) != (d < ndim)) return refuse(err, base + 20 + 4 * (uint64_t)d, "a dimension is not positive when used, else 0", i);
        if (d < ndim) {
            if (count > UINT64_MAX / dims[d]) return refuse(err, base + 20, "the shape is too large", i);
            count *= dims[d];
        }
    }
    if (rd32(pack + base + 44) != dims[0]) return refuse(err, base + 44, "channels is not dim 0", i);
    if (count > (UINT64_MAX - 7) / (uint64_t)bits) return refuse(err, base + 20, "the shape is too large", i);
    codes_at = align_up(cur->data);
    codes_size = codes_bytes(count, scheme, bits);
    if (codes_size > data_size || codes_at > data_size - codes_size)
        return refuse(err, base + 56, "the codes do not end inside the data", i);
    scales_at = align_up(codes_at + codes_size);
    if (rd64(pack + base + 48) != codes_at) return refuse(err, base + 48, "codes offset is not the next 64-byte boundary", i);
    if (rd64(pack + base + 56) != codes_size) return refuse(err, base + 56, "codes size is not ceil(n * k / 8) (ternary ceil(n / 5))", i);
    if (rd64(pack + base + 64) != scales_at) return refuse(err, base + 64, "scales offset is not the 64-byte boundary after the codes", i);
    if (scales_at > data_size || 4 * (uint64_t)dims[0] > data_size - scales_at)
        return refuse(err, base + 20, "the scales do not end inside the data", i);
    if (!all_zero(pack, data_at + cur->data, data_at + codes_at, &w) ||
        !all_zero(pack, data_at + codes_at + codes_size, data_at + scales_at, &w))
        return refuse(err, w, "alignment padding is not zero", i);
    cur->data = scales_at + 4 * (uint64_t)dims[0];
    return 0;
}

static float rdf32(const uint8_t *p) {
    uint32_t u = rd32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t field_at(const uint8_t *codes, uint64_t i, int bits) {
    uint32_t v = 0;
    int j;
    for (j = 0; j < bits; j++) {
        uint64_t pos = i * (uint64_t)bits + (uint64_t)j;
        v |= (uint32_t)((codes[pos >> 3] >> (pos & 7)) & 1u) << j;
    }
    return v;
}

static float unit_of(int scheme, int bits) {
    return scheme == SNNPACK_POT ? (float)(1u << ((1u << (bits - 1)) - 2)) : 1.0f;
}

/* docs/binary_format.md, Scales: which scale a channel of this layout may hold. */
static int scale_legal(float s, int scheme, int bits, int layout) {
    float u = unit_of(scheme, bits);
    uint32_t raw;
    int plus_zero;
    memcpy(&raw, &s, sizeof raw);
    plus_zero = raw == 0;
    if (layout == SNNPACK_CODES) return s == u;
    if (layout == SNNPACK_SIGNED || layout == SNNPACK_GEMM) return plus_zero || s == u || s == -u;
    return plus_zero || s == -u || (s > 0 && s <= 3.4028234663852886e38f);
}

static const uint32_t POW3[6] = {1, 3, 9, 27, 81, 243};

static int check_values(const snnpack_layer *l, const uint8_t *pack, long i, snnpack_error *err) {
    uint64_t used = l->count * (uint64_t)l->bits % 8, k;
    uint32_t c;
    if (l->scheme == SNNPACK_TERNARY) {
        used = l->count % 5;
        for (k = 0; k < l->codes_size; k++)
            if (l->codes[k] >= 243)
                return refuse(err, (uint64_t)(l->codes - pack) + k, "a ternary code byte is not five trits (243 or more)", i);
        if (used && l->codes[l->codes_size - 1] >= POW3[used])
            return refuse(err, (uint64_t)(l->codes - pack) + l->codes_size - 1, "the padding trits of the last code byte are not zero", i);
    } else if (used && (l->codes[l->codes_size - 1] >> used))
        return refuse(err, (uint64_t)(l->codes - pack) + l->codes_size - 1, "the padding bits of the last code byte are not zero", i);
    if (l->scheme == SNNPACK_POT)
        for (k = 0; k < l->count; k++)
            if (field_at(l->codes, k, l->bits) == 1u << (l->bits - 1))
                return refuse(err, (uint64_t)(l->codes - pack) + k * (uint64_t)l->bits / 8, "a PoT code is -0", i);
    for (c = 0; c < l->shape[0]; c++)
        if (!scale_legal(rdf32(l->scales + 4 * (uint64_t)c), l->scheme, l->bits, l->layout))
            return refuse(err, (uint64_t)(l->scales - pack) + 4 * (uint64_t)c, "a scale is not legal for its layout", i);
    return 0;
}

int snnpack_check(const uint8_t *pack, size_t size, uint32_t *count, snnpack_error *err) {
    uint64_t strings_at, strings_end, data_at, data_size, strsize, w;
    uint32_t n, i;
    int version;
    cursor_t cur = {0, 0};
    if (size < HEADER || memcmp(pack, "SNNPACK\0", 8)) return refuse(err, 0, "not an snnc weight pack (bad magic)", -1);
    version = rd16(pack + 8);
    if (version < 1 || version > 3) return refuse(err, 8, "format version is not 1, 2 or 3", -1);
    data_at = rd64(pack + 40);
    data_size = rd64(pack + 48);
    if (data_at > size || data_size != size - data_at) return refuse(err, 48, "truncated or has trailing bytes", -1);
    if (pack_crc(pack, size, version) != rd32(pack + 56)) return refuse(err, 56, "corrupt (checksum mismatch)", -1);
    n = rd32(pack + 16);
    strsize = rd32(pack + 20);
    strings_at = HEADER + (uint64_t)ENTRY * n;
    strings_end = strings_at + strsize;
    if (rd16(pack + 10) != 0) return refuse(err, 10, "flags are not 0", -1);
    if (rd32(pack + 12) != HEADER) return refuse(err, 12, "header size is not 64", -1);
    if (rd32(pack + 60) != 0) return refuse(err, 60, "reserved is not 0", -1);
    if (n < 1 || strings_end > size) return refuse(err, 16, "layer count is not at least 1 with the tables inside the file", -1);
    if (rd64(pack + 24) != HEADER) return refuse(err, 24, "layer table offset is not 64", -1);
    if (rd64(pack + 32) != strings_at) return refuse(err, 32, "string table offset is not right after the layer table", -1);
    if (data_at != align_up(strings_end)) return refuse(err, 40, "data offset is not the string table's end, 64-aligned", -1);
    if (!all_zero(pack, strings_end, data_at, &w)) return refuse(err, w, "alignment padding after the string table is not zero", -1);
    for (i = 0; i < n; i++)
        if (check_entry(pack, strings_at, strsize, data_at, data_size, i, &cur, version, err)) return -1;
    if (cur.strings != strsize) return refuse(err, 20, "string table size is not the names' total length", -1);
    if (cur.data != data_size) return refuse(err, 48, "data size is not the end of the last layer's scales", -1);
    for (i = 0; i < n; i++) {
        snnpack_layer l;
        snnpack_layer_at(pack, size, i, &l);
        if (check_values(&l, pack, (long)i, err)) return -1;
    }
    if (count) *count = n;
    return 0;
}

int snnpack_layer_at(const uint8_t *pack, size_t size, uint32_t i, snnpack_layer *l) {
    uint64_t base = HEADER + (uint64_t)ENTRY * i, strings_at, data_at;
    int d;
    if (size < HEADER || i >= rd32(pack + 16)) return -1;
    strings_at = rd64(pack + 32);
    data_at = rd64(pack + 40);
    memset(l, 0, sizeof *l);
    l->name = (const char *)pack + strings_at + rd32(pack + base);
    l->name_len = rd32(pack + base + 4);
    l->scale_name = (const char *)pack + strings_at + rd32(pack + base + 8);
    l->scale_name_len = rd32(pack + base + 12);
    l->scheme = pack[base + 16];
    l->bits = pack[base + 17];
    l->ndim = pack[base + 18];
    l->layout = pack[base + 19];
    l->count = 1;
    for (d = 0; d < l->ndim && d < SNNPACK_MAX_DIMS; d++) {
        l->shape[d] = rd32(pack + base + 20 + 4 * (uint64_t)d);
        l->count *= l->shape[d];
    }
    l->codes = pack + data_at + rd64(pack + base + 48);
    l->codes_size = rd64(pack + base + 56);
    l->scales = pack + data_at + rd64(pack + base + 64);
    return 0;
}

/* The quantizer's code of weight k: uniform q, PoT sign * c, ternary trit 0/1/2 as 0/1/-1,
 * binary sign bit 0/1 as 1/-1. */
static int32_t code_at(const snnpack_layer *l, uint64_t k) {
    uint32_t f, sign = 1u << (l->bits - 1);
    if (l->scheme == SNNPACK_TERNARY) {
        uint32_t b = l->codes[k / 5], t;
        switch (k % 5) { /* constant divisors: multiplications */
        case 0: t = b % 3; break;
        case 1: t = b / 3 % 3; break;
        case 2: t = b / 9 % 3; break;
        case 3: t = b / 27 % 3; break;
        default: t = b / 81 % 3; break;
        }
        return t == 2 ? -1 : (int32_t)t;
    }
    f = field_at(l->codes, k, l->bits);
    if (l->scheme == SNNPACK_BINARY) return f ? -1 : 1;
    if (l->scheme == SNNPACK_UNIFORM) return (int32_t)(f ^ sign) - (int32_t)sign;
    return (f & sign) ? -(int32_t)(f & (sign - 1)) : (int32_t)(f & (sign - 1));
}

/* The integer the initializer holds for weight k (before GEMM digits): codes (layout 1),
 * levels (0: uniform q, PoT sign * 2^(E + 1 - c)), or levels times the channel's sign. */
static int64_t value_at(const snnpack_layer *l, uint64_t k) {
    int32_t q = code_at(l, k);
    int64_t v = q;
    if (l->layout != SNNPACK_CODES && l->scheme == SNNPACK_POT) {
        int e = (1 << (l->bits - 1)) - 2, c = q < 0 ? -q : q;
        v = c ? (int64_t)1 << (e + 1 - c) : 0;
        if (q < 0) v = -v;
    }
    if (l->layout == SNNPACK_SIGNED || l->layout == SNNPACK_GEMM) {
        float s = rdf32(l->scales + 4 * (k / (l->count / l->shape[0])));
        v = s > 0 ? v : s < 0 ? -v : 0;
    }
    return v;
}

/* Balanced base-128 digit `index` of v (as snnc.quant.weights.digits), and the count. */
static int digit_count(int64_t v) {
    int n = 0;
    while (v) {
        int64_t r = (v + 64) % 128, d;
        if (r < 0) r += 128;
        d = r - 64;
        v = (v - d) / 128;
        n++;
    }
    return n;
}

static int8_t digit_at(int64_t v, int index) {
    int64_t d = 0;
    int n;
    for (n = 0; n <= index; n++) {
        int64_t r = (v + 64) % 128;
        if (r < 0) r += 128;
        d = r - 64;
        v = (v - d) / 128;
    }
    return (int8_t)d;
}

int snnpack_tensor_of(const snnpack_layer *l, snnpack_tensor *t) {
    int64_t low = 0, high = 0;
    uint64_t k;
    int d, digits = 1;
    memset(t, 0, sizeof *t);
    for (k = 0; k < l->count; k++) {
        int64_t v = value_at(l, k);
        if (v < low) low = v;
        if (v > high) high = v;
    }
    t->dtype = (low >= -128 && high <= 127) || l->layout == SNNPACK_CODES ? SNNPACK_INT8 : SNNPACK_INT16;
    if (l->layout == SNNPACK_GEMM) {
        if (t->dtype == SNNPACK_INT16)
            for (k = 0; k < l->count; k++) {
                int n = digit_count(value_at(l, k));
                if (n > digits) digits = n;
            }
        t->dtype = SNNPACK_INT8;
        t->ndim = 2;
        t->dims[0] = l->count / l->shape[0];
        t->dims[1] = (uint64_t)digits * l->shape[0];
    } else {
        t->ndim = l->ndim;
        for (d = 0; d < l->ndim; d++) t->dims[d] = l->shape[d];
    }
    t->count = l->layout == SNNPACK_GEMM ? t->dims[0] * t->dims[1] : l->count;
    t->bytes = t->count * (t->dtype == SNNPACK_INT16 ? 2u : 1u);
    return 0;
}

int snnpack_decode(const snnpack_layer *l, void *out, size_t out_size, snnpack_error *err) {
    snnpack_tensor t;
    uint8_t *o = (uint8_t *)out;
    uint64_t k;
    snnpack_tensor_of(l, &t);
    if (out_size < t.bytes) return refuse(err, 0, "the output buffer is smaller than the tensor", -1);
    if (l->layout == SNNPACK_GEMM) {
        /* w [M, Cin, *taps] -> rows (tap, cin), columns digit by digit, then channel */
        uint64_t m_count = l->shape[0], cin = l->shape[1], taps = l->count / m_count / cin;
        uint64_t rows = cin * taps, digits = t.dims[1] / m_count;
        int fits = digits == 1;
        for (k = 0; k < l->count; k++) {
            uint64_t m = k / (cin * taps), c = k / taps % cin, tap = k % taps, row = tap * cin + c;
            int64_t v = value_at(l, k);
            uint64_t dg;
            for (dg = 0; dg < digits; dg++)
                o[row * t.dims[1] + dg * m_count + m] = (uint8_t)(fits ? (int8_t)v : digit_at(v, (int)dg));
        }
        (void)rows;
        return 0;
    }
    for (k = 0; k < l->count; k++) {
        int64_t v = value_at(l, k);
        if (t.dtype == SNNPACK_INT8) {
            o[k] = (uint8_t)(int8_t)v;
        } else {
            uint16_t u = (uint16_t)(int16_t)v;
            o[2 * k] = (uint8_t)(u & 0xFF);
            o[2 * k + 1] = (uint8_t)(u >> 8);
        }
    }
    return 0;
}

const char *snnpack_dtype_name(int dtype) { return dtype == SNNPACK_INT16 ? "int16" : "int8"; }
