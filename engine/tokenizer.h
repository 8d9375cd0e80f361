/* engine/tokenizer.h - CLIP (byte-level BPE) and T5 (SentencePiece unigram)
 * tokenizers, id-exact with what the diffusers SD3 / FLUX pipelines feed the
 * text encoders.
 *
 * The references are transformers' *slow* tokenizers: CLIPTokenizer without
 * ftfy (BERT BasicTokenizer cleanup, the CLIP regex, byte-level BPE) and
 * T5Tokenizer(legacy=True) over sentencepiece. A T5 folder may hold
 * spiece.model or only a tokenizer.json (Unigram model); both give the same
 * ids, because tokenizer.json is read into the same model and run with
 * sentencepiece's normalisation rules (HF's fast tokenizer can differ from the
 * slow one on runs of unusual whitespace; we follow the slow one).
 *
 * Added tokens (tokenizer_config.json added_tokens_decoder, the special tokens,
 * T5's <extra_id_N>) are matched in the raw text first, leftmost-longest; the
 * text between them is tokenised piece by piece, with the whitespace next to
 * an lstrip/rstrip token removed as transformers does. single_word is ignored
 * (no CLIP or T5 folder sets it).
 *
 * Text is UTF-8 of explicit length (NUL bytes are ordinary characters). Each
 * byte that is not part of a well-formed UTF-8 sequence is read as U+FFFD,
 * which gives the ids Python gives for bytes decoded with errors="replace":
 * CLIP's cleanup drops U+FFFD, and so does T5's nmt_nfkc charsmap (a T5
 * model without that rule would give <unk>).
 * Cost is near-linear in the input: BPE is O(n log n) per word with no length
 * limit, the unigram search O(n * longest piece). tok_encode stops reading
 * CLIP text once it has enough tokens, so a 1 MB prompt costs little.
 *
 * Threading: tok_load/tok_free on one thread; a loaded tokenizer is read-only
 * and tok_encode* may run concurrently from any number of threads. */
#ifndef RALUD_ENGINE_TOKENIZER_H
#define RALUD_ENGINE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

struct tok;

enum tok_kind { TOK_CLIP = 1, TOK_T5 = 2 };

/* Load the tokenizer in folder dir. The kind comes from the files present:
 * vocab.json + merges.txt -> CLIP; spiece.model, or tokenizer.json with a
 * Unigram model -> T5. tokenizer_config.json, special_tokens_map.json and
 * added_tokens.json are read when present for the special and added tokens.
 * Errors: ERR_NOTFOUND (no tokenizer files), ERR_IO, ERR_FORMAT (malformed
 * file), ERR_UNSUPPORTED (e.g. a BPE sentencepiece model or byte fallback),
 * ERR_NOMEM; em names the file. */
int tok_load(struct tok **out, const char *dir, struct err_msg *em);
void tok_free(struct tok *t);

enum tok_kind tok_get_kind(const struct tok *t);
int32_t tok_pad_id(const struct tok *t);
int32_t tok_eos_id(const struct tok *t);
int32_t tok_bos_id(const struct tok *t); /* -1 for T5 */
/* model_max_length from tokenizer_config.json, or -1 when absent. */
int tok_model_max_length(const struct tok *t);

/* Exactly what the pipelines pass the text encoders: ids[0..max_len) filled.
 * CLIP: [bos, up to max_len - 2 tokens, eos, pad...]. T5: up to max_len - 1
 * tokens, then eos unless the last kept token already is eos, then pad; so on
 * truncation the last kept position is eos. *n_real (may be NULL) gets the
 * count before padding. ERR_INVAL if max_len < 2, ERR_NOMEM. */
int tok_encode(const struct tok *t, const char *text, size_t len, int max_len, int32_t *ids,
               int *n_real);

/* The untruncated, unpadded sequence (CLIP: bos ... eos; T5: ... eos unless
 * the text ends with a literal </s>). Writes min(n, cap) ids and stores the
 * full length n in *n_out, like snprintf. */
int tok_encode_raw(const struct tok *t, const char *text, size_t len, int32_t *ids, size_t cap,
                   size_t *n_out);

#endif
