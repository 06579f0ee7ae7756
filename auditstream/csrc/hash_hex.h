/* A head's record hashes as text (auditstream/doc_text.py hashes_text / hashes_of_text):
 * 16 lowercase hex digits per hash(), its 64 bits in two's complement. Written by
 * assembler/csrc/ecs_write.h and auditstream/csrc/doc_text.c, read by
 * treekeeper/csrc/fingerprints.c. */
#ifndef AUDITSTREAM_HASH_HEX_H
#define AUDITSTREAM_HASH_HEX_H
#include <stdint.h>

#define HASH_HEX_DIGITS 16

static inline void hash_hex_write(char *out, int64_t hash)
{
    static const char digits[] = "0123456789abcdef";
    uint64_t bits = (uint64_t)hash;
    for (int i = HASH_HEX_DIGITS - 1; i >= 0; i--, bits >>= 4)
        out[i] = digits[bits & 15];
}

/* Each byte's value as a lowercase hex digit, plus one; 0 for every other byte. */
static const unsigned char hash_hex_value[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4,  ['4'] = 5,  ['5'] = 6,  ['6'] = 7,  ['7'] = 8,
    ['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

/* 1 with *hash set, 0 when the 16 characters are not lowercase hex digits. One table look
 * per character and no branch (dedupe reads five hashes per event). */
static inline int hash_hex_read(const char *text, int64_t *hash)
{
    uint64_t bits = 0;
    unsigned bad = 0;
    for (int i = 0; i < HASH_HEX_DIGITS; i++) {
        unsigned value = hash_hex_value[(unsigned char)text[i]];
        bad |= value == 0;
        bits = bits << 4 | ((value - 1) & 15);
    }
    *hash = (int64_t)bits;
    return !bad;
}

#endif
