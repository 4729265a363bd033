/* SPDX-License-Identifier: GPL-2.0-only */
/* siphash.h - SipHash (Aumasson and Bernstein, 2012), the standard keyed
 * hash for short inputs.
 *
 * SipHash-2-4 of a 16-byte message, for rollout shares: a rollout must
 * pick the same clients on every box, after every reload, and must not be
 * steerable by whoever picks addresses; controller/rollout.py computes the
 * same function.
 *
 * SipHash-1-3 of a QUIC datagram, for its signature (quic.h): a client
 * must not be able to make two datagrams that differ sign alike, or it
 * could have its real hello taken for a repeat of its fake; under a key it
 * never learns, it cannot. 1-3 (as CPython's and Rust's hash tables use)
 * halves the rounds over a 1,200-byte datagram.
 */
#ifndef SLUICE_SIPHASH_H
#define SLUICE_SIPHASH_H

#define SIPHASH_INIT_0 0x736f6d6570736575ULL	/* "somepseu" */
#define SIPHASH_INIT_1 0x646f72616e646f6dULL	/* "dorandom" */
#define SIPHASH_INIT_2 0x6c7967656e657261ULL	/* "lygenera" */
#define SIPHASH_INIT_3 0x7465646279746573ULL	/* "tedbytes" */
#define SIPHASH_FINAL_XOR 0xff
#define SIPHASH_MESSAGE_BYTES 16

static __always_inline __u64 sip_rotl64(__u64 x, int bits)
{
	return (x << bits) | (x >> (64 - bits));
}

struct siphash_state {
	__u64 v0, v1, v2, v3;
};

static __always_inline void sip_round(struct siphash_state *s)
{
	s->v0 += s->v1; s->v1 = sip_rotl64(s->v1, 13); s->v1 ^= s->v0; s->v0 = sip_rotl64(s->v0, 32);
	s->v2 += s->v3; s->v3 = sip_rotl64(s->v3, 16); s->v3 ^= s->v2;
	s->v0 += s->v3; s->v3 = sip_rotl64(s->v3, 21); s->v3 ^= s->v0;
	s->v2 += s->v1; s->v1 = sip_rotl64(s->v1, 17); s->v1 ^= s->v2; s->v2 = sip_rotl64(s->v2, 32);
}

/* Two compression rounds per 8-byte word. */
static __always_inline void sip_absorb(struct siphash_state *s, __u64 word)
{
	s->v3 ^= word;
	sip_round(s);
	sip_round(s);
	s->v0 ^= word;
}

/* SipHash-2-4 of message[0, 16) (read as little-endian words) under key. */
static __always_inline __u64 siphash_16(const __u64 key[2], const __u8 *message)
{
	struct siphash_state s = {
		.v0 = key[0] ^ SIPHASH_INIT_0, .v1 = key[1] ^ SIPHASH_INIT_1,
		.v2 = key[0] ^ SIPHASH_INIT_2, .v3 = key[1] ^ SIPHASH_INIT_3,
	};
	__u64 word;

	__builtin_memcpy(&word, message, 8);
	sip_absorb(&s, word);
	__builtin_memcpy(&word, message + 8, 8);
	sip_absorb(&s, word);
	/* The last word carries the message length in its top byte. */
	sip_absorb(&s, (__u64)SIPHASH_MESSAGE_BYTES << 56);
	s.v2 ^= SIPHASH_FINAL_XOR;
	sip_round(&s);
	sip_round(&s);
	sip_round(&s);
	sip_round(&s);
	return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

/* SipHash-1-3 of bytes[0, len), len at most capacity (a power of two, at
 * least 8: the bytes' room; words past len are never read, a last partial
 * word is read whole and masked). One round per word, in a bounded loop:
 * unrolled, 256 words would be 8,000 instructions. */
static __always_inline __u64 siphash13(const __u64 key[2], const __u8 *bytes, __u32 len, const __u32 capacity)
{
	struct siphash_state s = {
		.v0 = key[0] ^ SIPHASH_INIT_0, .v1 = key[1] ^ SIPHASH_INIT_1,
		.v2 = key[0] ^ SIPHASH_INIT_2, .v3 = key[1] ^ SIPHASH_INIT_3,
	};
	__u32 words = len / 8;
	__u64 word;

	for (__u32 i = 0; i < capacity / 8; i++) {
		if (i >= words)
			break;
		__u32 at = i * 8;
		/* Below capacity already; clang walks a pointer and a count of
		 * its own instead, which the verifier cannot tie together. */
		hide_from_compiler(at);
		at &= capacity - 8;
		__builtin_memcpy(&word, bytes + at, 8);
		s.v3 ^= word;
		sip_round(&s);
		s.v0 ^= word;
	}
	/* The last word: the bytes left (len % 8 of them) and len's low byte on top. */
	__u64 last = (__u64)len << 56;
	if (len % 8) {
		__u32 at = words * 8;
		/* Below capacity - 8 already, len being below capacity (as above). */
		hide_from_compiler(at);
		at &= capacity - 8;
		__builtin_memcpy(&word, bytes + at, 8);
		last |= word & ((1ULL << (len % 8 * 8)) - 1);
	}
	s.v3 ^= last;
	sip_round(&s);
	s.v0 ^= last;
	s.v2 ^= SIPHASH_FINAL_XOR;
	sip_round(&s);
	sip_round(&s);
	sip_round(&s);
	return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

#endif /* SLUICE_SIPHASH_H */
