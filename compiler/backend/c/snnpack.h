/* snnpack: a dependency-free C99 reader of snnc's .snnpack weight packs (format versions 1,
 * 2 and 3, docs/binary_format.md), written by `snnc decoder -o DIR`.
 *
 * snnpack_check validates a whole pack exactly as snnc's Python reader does (it accepts the
 * packs snnc.backend.pack.decode accepts and refuses the rest, saying why and at which byte);
 * snnpack_layer_at and snnpack_tensor_of then describe each layer and the ONNX initializer
 * it fills, and snnpack_decode writes that initializer's values into a buffer the caller
 * allocated: the arrays snnc.runtime.pack_arrays gives, which an app hands to ONNX Runtime
 * with AddExternalInitializers (docs/deployment.md). The library allocates nothing and
 * reads only inside the buffer it is given; it keeps no state between calls.
 */
#ifndef SNNPACK_H
#define SNNPACK_H

#include <stddef.h>
#include <stdint.h>

#define SNNPACK_MAX_DIMS 6

enum { SNNPACK_UNIFORM = 0, SNNPACK_POT = 1, SNNPACK_TERNARY = 2, SNNPACK_BINARY = 3 }; /* schemes */
enum { SNNPACK_LEVELS = 0, SNNPACK_CODES = 1, SNNPACK_SIGNED = 2, SNNPACK_GEMM = 3 };
enum { SNNPACK_INT8 = 1, SNNPACK_INT16 = 2 };                    /* initializer types */

typedef struct {
    char message[256]; /* what is wrong, naming the field and the layer */
    uint64_t offset;   /* the byte of the file it is about */
} snnpack_error;

typedef struct {
    const char *name;        /* the ONNX initializer it fills (UTF-8, not terminated) */
    uint32_t name_len;
    const char *scale_name;  /* the DequantizeLinear scale initializer (layout 0), else "" */
    uint32_t scale_name_len;
    int scheme, bits, layout, ndim;
    uint32_t shape[SNNPACK_MAX_DIMS]; /* output channels first */
    uint64_t count;                   /* the number of weights, product(shape) */
    const uint8_t *codes;             /* count k-bit fields, LSB first; ternary five trits a byte */
    uint64_t codes_size;
    const uint8_t *scales;            /* shape[0] little-endian float32 */
} snnpack_layer;

typedef struct {
    int dtype;  /* SNNPACK_INT8 or SNNPACK_INT16 (little-endian) */
    int ndim;
    uint64_t dims[SNNPACK_MAX_DIMS];
    uint64_t count; /* elements */
    uint64_t bytes; /* count * (1 or 2): what snnpack_decode writes */
} snnpack_tensor;

/* 0 if `pack` (size bytes) is a valid pack, its layer count in *count; else -1 and *err. */
int snnpack_check(const uint8_t *pack, size_t size, uint32_t *count, snnpack_error *err);

/* Layer i (0 <= i < count) of a pack snnpack_check accepted: 0, or -1 if i is out of range. */
int snnpack_layer_at(const uint8_t *pack, size_t size, uint32_t i, snnpack_layer *layer);

/* The initializer the layer fills: its type and dims (which depend on the values: int8 if
 * they fit, else int16; a GEMM matrix has as many digit blocks as its largest value needs). */
int snnpack_tensor_of(const snnpack_layer *layer, snnpack_tensor *tensor);

/* Write the initializer into out (out_size >= tensor.bytes): 0, or -1 and *err. */
int snnpack_decode(const snnpack_layer *layer, void *out, size_t out_size, snnpack_error *err);

/* "int8" or "int16". */
const char *snnpack_dtype_name(int dtype);

#endif
