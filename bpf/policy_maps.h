/* SPDX-License-Identifier: GPL-2.0-only */
/* policy_maps.h - the policy a packet is judged under.
 *
 * The programs are loaded once; a new policy (a reload, a schedule step)
 * fills the policy maps of the generation packets are not reading, then
 * the controller flips policy_generation to it (controller/datapath.py).
 * A packet reads the generation once, where it enters, and reads every
 * policy map through it, so it sees the old policy or the new, never a mix.
 * Its sluice_config carries the generation (cfg->generation) to whatever
 * reads a policy map. The tail-called stages take it from
 * packet_generations: the live one may have flipped since the packet
 * entered, but a packet's programs run one after another on one CPU
 * (XDP runs them under rcu_read_lock with migration off), so the per-CPU
 * slot holds the entering packet's generation. A generation is refilled
 * only at the reload after next: far longer than a packet takes.
 */
#ifndef SLUICE_POLICY_MAPS_H
#define SLUICE_POLICY_MAPS_H

#include "sluice_abi.h"
#include "maps.h"

/* The live generation's config, for a program no stage is tail-called
 * from (tc): it reads the generation once, here. */
static __always_inline struct sluice_config *config_live(void)
{
	__u32 zero = 0;
	__u32 *live = policy_generation.lookup(&zero);

	if (!live)
		return 0;
	__u32 generation = *live;
	return config.lookup(&generation);
}

/* The live generation's config, for the XDP entry program: the stages it
 * calls read the same one (config_of_packet()). */
static __always_inline struct sluice_config *config_enter(void)
{
	__u32 zero = 0;
	__u32 *entered = packet_generations.lookup(&zero);
	struct sluice_config *cfg = config_live();

	if (!entered || !cfg)
		return 0;
	*entered = cfg->generation;
	return cfg;
}

/* The config of the generation the packet in hand entered under (stages). */
static __always_inline struct sluice_config *config_of_packet(void)
{
	__u32 zero = 0;
	__u32 *entered = packet_generations.lookup(&zero);

	if (!entered)
		return 0;
	__u32 generation = *entered;
	return config.lookup(&generation);
}

/* What rule_id does under cfg's generation; 0 for an id past the rules
 * (it would index the other generation's). */
static __always_inline struct rule_info *rule_of(const struct sluice_config *cfg, __u32 rule_id)
{
	if (rule_id >= SLUICE_MAX_RULES)
		return 0;
	__u32 index = cfg->generation * SLUICE_MAX_RULES + rule_id;
	return rules.lookup(&index);
}

/* The inner maps of cfg's generation (0 before a policy fills it), to
 * look up with bpf_map_lookup_elem(). */
static __always_inline void *domain_rules_of(const struct sluice_config *cfg)
{
	__u32 generation = cfg->generation;
	return domain_rules_by_generation.lookup(&generation);
}

static __always_inline void *rule_sets_of(const struct sluice_config *cfg)
{
	__u32 generation = cfg->generation;
	return rule_sets_by_generation.lookup(&generation);
}

static __always_inline void *client_classes_of(const struct sluice_config *cfg)
{
	__u32 generation = cfg->generation;
	return client_classes_by_generation.lookup(&generation);
}

static __always_inline void *destinations_of(const struct sluice_config *cfg)
{
	__u32 generation = cfg->generation;
	return destinations_by_generation.lookup(&generation);
}

static __always_inline void *alpn_ids_of(const struct sluice_config *cfg)
{
	__u32 generation = cfg->generation;
	return alpn_ids_by_generation.lookup(&generation);
}

static __always_inline void *block_pages_of(const struct sluice_config *cfg)
{
	__u32 generation = cfg->generation;
	return block_pages_by_generation.lookup(&generation);
}

#endif /* SLUICE_POLICY_MAPS_H */
