/* SPDX-License-Identifier: GPL-2.0-only */
/* domain_match.h - normalise a server name and find the rule that names it.
 *
 * The name is hashed from its last byte to its first. Whenever the scan is
 * about to cross a dot, the hash so far is the hash of a whole-label suffix
 * ("twimg.com" inside "pbs.twimg.com"), and one lookup asks whether a suffix
 * rule names it. A scan never stops inside a label, so "nottwimg.com" can
 * never reach the hash of "twimg.com". Matching costs one lookup per label,
 * whatever the number of rules; the longest suffix found wins, and an exact
 * rule for the whole name beats a suffix rule for it.
 *
 * What is found is a rule set: the controller has already gathered into the
 * set of each domain the rules of the less specific domains above it, so
 * the most specific domain entry is all the next stage needs.
 *
 * Keys pair two independent 64-bit hashes with the length, so a false match
 * needs both hashes of two names of equal length to collide.
 * controller/names.py computes the same keys; keep the two in step.
 */
#ifndef SLUICE_DOMAIN_MATCH_H
#define SLUICE_DOMAIN_MATCH_H

#include "maps.h"
#include "payload.h"

#define NAME_FNV_OFFSET 0xCBF29CE484222325ULL
#define NAME_FNV_PRIME 0x100000001B3ULL
#define NAME_MIX_SEED 0x9E3779B97F4A7C15ULL
#define NAME_MIX_MULT 0xFF51AFD7ED558CCDULL
#define NAME_MIX_SHIFT 29

/* Branch-free, so that a loop over a name adds no verifier states. */
static __always_inline __u8 domain_ascii_lower(__u8 c)
{
	__u64 below_a = ((__u64)c - 'A') >> 63;
	__u64 above_z = ((__u64)'Z' - c) >> 63;

	return c + (('a' - 'A') & -(__u64)(1 ^ (below_a | above_z)));
}

/* Copy the raw name at bytes[off, off + len) into name, lower-cased and
 * without one trailing dot. Returns the normalised length. */
static __always_inline __u32 domain_normalise_name(const __u8 *bytes, __u32 off, __u32 len, char *name)
{
	for (int i = 0; i < SLUICE_NAME_MAX; i++) {
		hide_from_compiler(i);
		if (i >= len)
			break;
		name[i & NAME_BUFFER_MASK] = domain_ascii_lower(payload_u8(bytes, off + i));
	}
	if (len > 0 && name[(len - 1) & NAME_BUFFER_MASK] == '.')
		len--;
	return len;
}

static __always_inline __u32 domain_lookup_rule(void *names, __u64 fnv, __u64 mix, __u32 len, __u32 kind)
{
	struct name_key key = { .hash_fnv = fnv, .hash_mix = mix, .len = len, .kind = kind };
	__u32 *set_id = bpf_map_lookup_elem(names, &key);

	return set_id ? *set_id : 0;
}

/* The rule set of the most specific domain entry naming name[0, len), or 0,
 * under cfg's policy. */
static __always_inline __u32 domain_match(const struct sluice_config *cfg, const char *name, __u32 len)
{
	__u64 fnv = NAME_FNV_OFFSET;
	__u64 mix = NAME_MIX_SEED;
	__u32 best = 0;
	void *names = domain_rules_of(cfg);

	if (!names)
		return 0;

	for (int i = 0; i < SLUICE_NAME_MAX; i++) {
		hide_from_compiler(i);
		if (i >= len)
			break;
		__u8 c = name[(len - 1 - i) & NAME_BUFFER_MASK];
		/* Test for a dot through a derived value: comparing c itself would
		 * teach the verifier c, and with it every hash along a run of dots,
		 * and it would then walk the loop once more for each such run. */
		__u64 is_dot = ((__u64)(c ^ '.') - 1) >> 63;
		hide_from_compiler(is_dot);	/* or clang turns it back into c == '.' */
		if (is_dot) {
			__u32 set_id = domain_lookup_rule(names, fnv, mix, i, SLUICE_MATCH_SUFFIX);
			if (set_id)
				best = set_id;
		}
		fnv = (fnv ^ c) * NAME_FNV_PRIME;
		mix = (mix ^ c) * NAME_MIX_MULT;
		mix ^= mix >> NAME_MIX_SHIFT;
	}
	if (len == 0)
		return 0;
	__u32 exact = domain_lookup_rule(names, fnv, mix, len, SLUICE_MATCH_EXACT);
	if (exact)
		return exact;
	__u32 whole = domain_lookup_rule(names, fnv, mix, len, SLUICE_MATCH_SUFFIX);
	return whole ? whole : best;
}

#endif /* SLUICE_DOMAIN_MATCH_H */
