/* engine/safetensors.h - safetensors reader: mmap, full header validation, lookup.
 *
 * A st_file maps one .safetensors file read-only and validates the whole header
 * when it is opened, so lookups never fail on malformed input later. Tensors
 * come back as views into the mapping (no copy), valid until st_close. A
 * st_set joins the shards of one checkpoint (diffusers / transformers layout)
 * into one namespace. This module does not write files, convert dtypes or
 * know about backends.
 *
 * Threading: open and close on one thread; once open, every lookup is
 * read-only and may run concurrently from any thread.
 *
 * What st_open checks (any failure: an error code, never a crash, and
 * em->text naming the file and, where there is one, the tensor):
 *   - 8-byte little-endian header length N with 2 <= N <= ST_HEADER_MAX and
 *     8 + N <= file size                                        ERR_FORMAT
 *   - header is JSON (duplicate keys rejected) and a JSON object ERR_FORMAT
 *   - "__metadata__", if present, is an object of strings       ERR_FORMAT
 *   - every other entry is an object with "dtype" (string), "shape" (array
 *     of non-negative integers, at most ST_MAX_DIMS) and "data_offsets"
 *     ([begin, end] non-negative integers, begin <= end <= data size)
 *                                                               ERR_FORMAT
 *   - the dtype is one of F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8
 *     U8 BOOL                                                   ERR_UNSUPPORTED
 *   - more than ST_MAX_DIMS dims                                ERR_UNSUPPORTED
 *   - end - begin == nelem * dtype size, computed without overflow
 *                                                               ERR_FORMAT
 *   - the byte ranges of all tensors are pairwise disjoint      ERR_FORMAT
 * Gaps and trailing bytes in the data section are allowed.
 *
 * Shapes: struct tensor holds at most TENSOR_MAX_DIMS (4) dims. A 0-dim
 * (scalar) tensor is returned as shape [1]. A tensor with 5..8 dims is
 * accepted at open (so one odd tensor does not make a whole file unusable);
 * st_find folds its leading size-1 dims away, and if it still has more than 4
 * dims st_find returns ERR_UNSUPPORTED for that tensor only.
 *
 * Alignment: a tensor whose data is not aligned to its element size inside the
 * file (headers not padded to 8 bytes) is copied once, at open, into an
 * aligned heap buffer owned by the st_file (logged as a WARN), so every
 * returned data pointer is element-aligned.
 *
 * fp8 scales: for an F8_E4M3 / F8_E5M2 tensor named "<base>.weight", the
 * per-tensor dequantisation factor is read at open from the companion
 * "<base>.scale_weight" (ComfyUI "scaled_fp8" checkpoints, e.g. FLUX fp8
 * scaled) or, if that is absent, "<base>.weight_scale" (ComfyUI mixed
 * precision / ModelOpt-style checkpoints). The companion must hold exactly one
 * finite positive F32/F16/BF16 value (shape [], [1], [1, 1], ...); st_find
 * puts it in tensor.scale (1.0 when there is no companion). A companion
 * that is not like that (e.g. a per-channel vector) makes st_find return
 * ERR_UNSUPPORTED for that weight rather than silently ignoring it; so does a
 * scale != 1 on a weight that is not fp8. Input scales ("scale_input",
 * "input_scale") and the "scaled_fp8" marker tensor are ordinary tensors
 * here. In a st_set the companion may live in another shard.
 *
 * The caller must not truncate or rewrite a file while it is mapped: that is
 * a SIGBUS, which no reader of a shared mapping can prevent. */
#ifndef RALUD_ENGINE_SAFETENSORS_H
#define RALUD_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "kernels/tensor.h"

#define ST_HEADER_MAX (100u * 1000u * 1000u) /* bytes; the reference reader's limit */
#define ST_MAX_DIMS 8

struct st_file;
struct st_set;

/* ---- one file ---- */

/* Map and validate path. Errors: ERR_NOTFOUND (no such file), ERR_IO,
 * ERR_FORMAT, ERR_UNSUPPORTED, ERR_NOMEM. *out is written only on success. */
int st_open(struct st_file **out, const char *path, struct err_msg *em);
/* Same validation over an in-memory image of a whole file (length prefix,
 * header, data). buf is borrowed: it must outlive the st_file. label names
 * the image in messages and is returned by st_path. Used by the fuzzer. */
int st_open_memory(struct st_file **out, const void *buf, size_t n, const char *label,
                   struct err_msg *em);
void st_close(struct st_file *f); /* NULL is a no-op */

/* A view of tensor name: data points into the mapping (borrowed, valid until
 * st_close), strides contiguous, scale as described above.
 * ERR_OK, ERR_NOTFOUND, or ERR_UNSUPPORTED (> 4 dims after folding leading
 * 1s, or an fp8 scale companion that cannot be used). */
int st_find(const struct st_file *f, const char *name, struct tensor *out);
/* Tensors are numbered 0..st_count-1 in strcmp order of their names. The
 * returned strings are borrowed from f. */
size_t st_count(const struct st_file *f);
const char *st_name(const struct st_file *f, size_t i);
const char *st_path(const struct st_file *f);
/* A "__metadata__" value, or NULL if absent. Borrowed from f. */
const char *st_metadata(const struct st_file *f, const char *key);
size_t st_bytes(const struct st_file *f); /* size of the file (mapped bytes) */

/* ---- a checkpoint made of one or more files ---- */

/* Open the checkpoint <stem> in dir (stem e.g. "diffusion_pytorch_model" or
 * "model"). The first of these that exists is used:
 *   <stem>.safetensors.index.json        sharded; {"weight_map": {tensor: shard}}
 *   <stem>.safetensors
 *   <stem>.safetensors.index.fp16.json   diffusers/transformers variant spelling
 *   <stem>.fp16.safetensors.index.json   (also accepted)
 *   <stem>.fp16.safetensors
 * Shards (e.g. model-00001-of-00002.safetensors) are whatever the index
 * names; each must be a plain file name in dir. Every shard must exist
 * (ERR_NOTFOUND) and hold every tensor the index maps to it (ERR_FORMAT).
 * Tensors present in a shard but not in the index are kept. Nothing found:
 * ERR_NOTFOUND. A tensor name in two files: ERR_FORMAT naming both. */
int st_set_open_dir(struct st_set **out, const char *dir, const char *stem, struct err_msg *em);
/* Open explicit files (n >= 1) as one set; same duplicate rule. */
int st_set_open_files(struct st_set **out, const char *const *paths, size_t n, struct err_msg *em);
void st_set_close(struct st_set *s); /* NULL is a no-op */

int st_set_find(const struct st_set *s, const char *name, struct tensor *out);
size_t st_set_count(const struct st_set *s);               /* all tensors, all files */
const char *st_set_name(const struct st_set *s, size_t i); /* strcmp order */
size_t st_set_nfiles(const struct st_set *s);
const struct st_file *st_set_file(const struct st_set *s, size_t i); /* borrowed */
size_t st_set_bytes(const struct st_set *s);                         /* total mapped bytes */

#endif
