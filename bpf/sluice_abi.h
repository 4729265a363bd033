/* SPDX-License-Identifier: GPL-2.0-only */
/* sluice_abi.h - everything the data plane and the controller share.
 *
 * This header is the single source of truth for the layout of every map key,
 * map value and event, and for every constant the controller writes into or
 * reads out of the data plane. The controller never redeclares these structs:
 * it takes their ctypes from bcc (which reads them from this file through
 * clang) and parses the constants below with controller/abi.py.
 * tests/test_abi.py proves that both views agree with the kernel's BTF.
 *
 * Keep constants as plain "#define NAME number" or enum members so that the
 * controller can read them.
 */
#ifndef SLUICE_ABI_H
#define SLUICE_ABI_H

/* A server name as seen on the wire: the TLS SNI allows up to 255 bytes in
 * practice, DNS names are at most 253 characters (254 with the root dot). */
#define SLUICE_NAME_MAX 255

/* Rules live in an array indexed by rule id; id 0 means "no rule". */
#define SLUICE_MAX_RULES 4096

/* Policies loaded side by side: the running one and the one a reload fills
 * before it flips policy_generation to it (policy_maps.h). */
#define SLUICE_GENERATIONS 2

/* Flow table size (LRU: the least recently used flow is evicted first);
 * the index of IPv6 flows' numbers (ipv6_flows) holds as many flows. */
#define SLUICE_FLOW_MAX 262144

/* flow_state.receiver: what the receiver model (receiver.h) knows of the flow. */
#define SLUICE_RECEIVER_TS_KNOWN 1	/* ts_recent holds the client's timestamp */
#define SLUICE_RECEIVER_SYN_DATA 2	/* the SYN's data was read: provisional until the next client segment */
#define SLUICE_RECEIVER_EVASION 4	/* a segment the server would not keep as it came was seen */
#define SLUICE_RECEIVER_URGENT 8	/* urgent_at holds the stream offset of the urgent byte */
#define SLUICE_RECEIVER_SYN_HELD 16	/* a SYN of another connection came: held_syn_seq (flow.h) */
#define SLUICE_RECEIVER_SYN_HELD_HI 32	/* ...sent by the key's hi end */
#define SLUICE_RECEIVER_CONFIRMED_HERE 64	/* tentative bytes were confirmed by a server segment on the client's
						 * interface before any came in on another (receiver.h); a bit of
						 * this byte, which a settled flow's packet tests already */

/* flow_state.server: what sluice knows of the server's segments (receiver.h). */
#define SLUICE_SERVER_SEQ 1		/* server_isn..server_end hold its sequence numbers */
#define SLUICE_SERVER_LOST 2		/* ...its segments did not fit one connection's: its ACKs go unchecked */
#define SLUICE_SERVER_ELSEWHERE 4	/* one came in on an interface other than the client's SYN's: it is there */

/* A client segment whose TTL (hop limit) is lower than its SYN's by more
 * than this (inspection.ttl_margin) may expire before the server: it is
 * held tentatively, and read only once the server acknowledges it. */
#define SLUICE_TTL_MARGIN_DEFAULT 4

/* Client-scope throttle and shape clocks (LRU). */
#define SLUICE_CLIENT_CLOCKS_MAX 65536

/* The controller sizes the domain rule map to the policy at compile time
 * (-DSLUICE_DOMAIN_RULES_MAX=n); this is the size without a policy. */
#define SLUICE_DOMAIN_RULES_DEFAULT 1024

/* The controller sizes the client class trie to the policy's prefixes
 * (-DSLUICE_CLIENT_PREFIXES_MAX=n); this is the size without classes. */
#define SLUICE_CLIENT_PREFIXES_DEFAULT 1

/* Rule sets: the rules that may apply to one name, per client class. The
 * controller sizes the map (-DSLUICE_RULE_SETS_MAX=n). */
#define SLUICE_RULE_SETS_DEFAULT 1
#define SLUICE_RULE_SET_MAX 8		/* rules in one set */

/* The controller sizes the destination trie to the policy's prefixes
 * (-DSLUICE_DESTINATION_PREFIXES_MAX=n); this is the size without any. */
#define SLUICE_DESTINATION_PREFIXES_DEFAULT 1

/* The rule set of flows whose name no domain entry names (or that have no
 * name): it holds the rules without a name condition. */
#define SLUICE_RULE_SET_UNNAMED 4294967295

/* ALPN protocol ids a policy's rules may name (bits of rule_info.alpn_ids),
 * and the longest id a rule may name (longer ones offered match no rule). */
#define SLUICE_ALPN_IDS_MAX 32
#define SLUICE_ALPN_ID_BYTES 15

/* The start of a ClientHello's ALPN extension body that the data plane
 * keeps, for the rules and in the flow's event (a power of two): a
 * browser's list ("h2", "http/1.1") takes 14 bytes. */
#define SLUICE_ALPN_BYTES 64

/* Destination port ranges a rule can be limited to. */
#define SLUICE_PORT_RANGES_MAX 4

/* Rollout: a client is in a rule's share when the high 32 bits of its keyed
 * hash are below the rule's threshold; 2^32 means every client. */
#define SLUICE_ROLLOUT_ALL 4294967296

/* QUIC Initial datagrams go to the controller whole, up to this many bytes
 * (a power of two; clients pad Initials to 1200, and rarely exceed 1500). */
#define SLUICE_QUIC_DATAGRAM_MAX 2048

/* A QUIC client pads each datagram of its first flight to at least this
 * many bytes (RFC 9000 section 14.1; Google QUIC does too): a shorter UDP
 * payload is never taken for an Initial (quic.h). */
#define SLUICE_QUIC_INITIAL_MIN_DATAGRAM 1200

/* The UDP destination ports GTP-U (3GPP TS 29.281) and VXLAN (RFC 7348)
 * are known by (parsing_helpers.h). */
#define SLUICE_GTPU_PORT 2152
#define SLUICE_VXLAN_PORT 4789

/* Ring buffer for QUIC Initial datagrams, in bytes (a power of two). */
#define SLUICE_QUIC_RING_BYTES 1048576

/* Ring buffer for classification events, in bytes (a power of two). */
#define SLUICE_EVENT_RING_BYTES 262144

/* sluice replay runs a capture a chunk at a time (controller/replay_batch.py):
 * the controller writes the chunk's frames, as the capture holds them,
 * into replay_chunk, and bpf/replay_driver.c runs them, many a test run.
 * A chunk holds up to SLUICE_REPLAY_CHUNK_FRAMES frames, which lie within
 * SLUICE_REPLAY_CHUNK_BYTES from its first frame's start (a power of two,
 * for the driver's mask). */
#define SLUICE_REPLAY_CHUNK_FRAMES 4096
#define SLUICE_REPLAY_CHUNK_BYTES 1048576
/* The driver copies frames shorter than this into the packet (a power of
 * two, for its mask); longer ones run by a test run of their own. */
#define SLUICE_REPLAY_FRAME_BYTES 2048
/* Frames a test run of the driver runs at most. The events ring must hold
 * what they may send before the controller reads it: replay_driver.c checks
 * that at compile time, with SLUICE_REPLAY_EVENTS_PER_FRAME. */
#define SLUICE_REPLAY_BATCH_FRAMES 256
#define SLUICE_REPLAY_EVENTS_PER_FRAME 2

enum sluice_action {
	SLUICE_ACTION_NONE = 0,		/* no rule names the flow: it passes */
	SLUICE_ACTION_ALLOW = 1,
	SLUICE_ACTION_BLOCK = 2,
	SLUICE_ACTION_THROTTLE = 3,	/* police to a rate in XDP: drop the excess */
	SLUICE_ACTION_SHAPE = 4,	/* pace to a rate at tc egress (EDT, needs fq) */
	SLUICE_ACTION_DELAY = 5,	/* hold each packet a fixed time at tc egress */
	SLUICE_ACTION_FREEZE = 6,	/* drop every packet of the flow, both ways, never answer */
};

/* What a rule's trigger counts (rule_info.trigger_unit): until the count of
 * its direction passes trigger_at, the flow passes untouched. */
enum sluice_trigger_unit {
	SLUICE_TRIGGER_NONE = 0,	/* the action applies from the flow's first judged packet */
	SLUICE_TRIGGER_BYTES = 1,	/* TCP or UDP payload bytes: the data the application sees */
	SLUICE_TRIGGER_PACKETS = 2,
};

/* A rule's condition on Encrypted Client Hello (rule_info.ech). */
enum sluice_ech_condition {
	SLUICE_ECH_ANY = 0,
	SLUICE_ECH_PRESENT = 1,		/* a ClientHello (TLS or QUIC) offering extension 0xfe0d */
	SLUICE_ECH_ABSENT = 2,		/* a ClientHello without it */
};

/* Who shares one token bucket (throttle) or virtual clock (shape). */
enum sluice_scope {
	SLUICE_SCOPE_FLOW = 0,		/* each flow its own */
	SLUICE_SCOPE_CLIENT = 1,	/* all flows of one client address under the rule */
	SLUICE_SCOPE_RULE = 2,		/* every flow of the rule together */
};

/* Direction relative to the flow's client. */
enum sluice_direction {
	SLUICE_DIR_UP = 0,		/* client -> server */
	SLUICE_DIR_DOWN = 1,		/* server -> client */
	SLUICE_DIRS = 2,
};

/* Rule flags. */
#define SLUICE_RULE_MONITOR 1		/* classify and count, never enforce */
#define SLUICE_RULE_INACTIVE 2		/* outside its schedule: never chosen */
#define SLUICE_RULE_CLIENT_OPENED 4	/* only flows sluice saw the client open (SYN) */

/* What the key of a domain rule names. */
enum sluice_match_kind {
	SLUICE_MATCH_SUFFIX = 1,	/* the name and every name below it */
	SLUICE_MATCH_EXACT = 2,		/* that one name only */
};

/* The inspection stages, each its own program so that the verifier checks
 * each one alone; the entry program tail-calls them through a program array
 * that the controller fills at these indices. */
enum sluice_stage {
	SLUICE_STAGE_TLS = 0,		/* sluice_stage_tls: find a ClientHello's SNI */
	SLUICE_STAGE_HTTP = 1,		/* sluice_stage_http: an HTTP request line, and its lines */
	SLUICE_STAGE_MATCH = 2,		/* sluice_stage_match: name -> rule set */
	SLUICE_STAGE_SELECT = 3,	/* sluice_stage_select: client, rule set -> rule -> verdict */
	SLUICE_STAGE_STREAM = 4,	/* sluice_stage_stream: keep a segment in the flow's stream */
	SLUICE_STAGE_HTTP_HOST = 5,	/* sluice_stage_http_host: the host, past the request line */
	SLUICE_STAGE_REPLY = 6,		/* sluice_stage_reply: answer a blocked flow's client (block_reply.h) */
	SLUICE_STAGE_FRAGMENT = 7,	/* sluice_stage_fragment: gather IP fragments, judge the datagram */
	SLUICE_STAGE_STREAM_HTTP = 8,	/* sluice_stage_stream_http: an HTTP request from the stream */
	SLUICE_STAGE_STREAM_TLS = 9,	/* sluice_stage_stream_tls: a ClientHello from the stream */
	SLUICE_STAGE_RECEIVER = 10,	/* sluice_stage_receiver: would the server keep this segment? (receiver.h) */
	SLUICE_STAGE_OPENING = 11,	/* sluice_stage_opening: judge a new flow at its opening packet, before any name */
	SLUICE_STAGE_TENTATIVE = 12,	/* sluice_stage_tentative: keep a low-TTL client segment until acknowledged (tentative.h) */
	SLUICE_STAGE_CONFIRM = 13,	/* sluice_stage_confirm: a server's ACK of such bytes: read them (tentative.h) */
	SLUICE_STAGE_QUIC = 14,		/* sluice_stage_quic: hand a known QUIC flow's Initial over, unless it repeats one (quic.h) */
	SLUICE_STAGE_MAX = 15,
};

/* How a block rule blocks (rule_info.block_method). */
enum sluice_block_method {
	SLUICE_BLOCK_DROP = 0,		/* drop every packet: the client waits for its own timeout */
	SLUICE_BLOCK_RESET = 1,		/* answer the client with a TCP RST, and reset the server too */
	SLUICE_BLOCK_PAGE = 2,		/* plain HTTP: answer with the rule's 451 page, then reset; else as RESET */
};

enum sluice_proto {
	SLUICE_PROTO_UNKNOWN = 0,
	SLUICE_PROTO_TLS = 1,
	SLUICE_PROTO_HTTP = 2,
	SLUICE_PROTO_QUIC = 3,		/* settled by the controller, from Initial packets */
};

enum sluice_flow_state {
	SLUICE_FLOW_INSPECTING = 0,	/* still looking for a ClientHello or request (rule_id: its opening
					 * judgement, which a name read replaces) */
	SLUICE_FLOW_CLASSIFIED = 1,	/* verdict final: rule_id and action hold */
	SLUICE_FLOW_GAVE_UP = 2,	/* window spent without a name: passes */
};

/* Global counters (per-CPU array, index = member). */
enum sluice_counter {
	SLUICE_CNT_PACKETS = 0,		/* every packet the program saw */
	SLUICE_CNT_SKIPPED,		/* not TCP/UDP over IP, a later fragment, or unparsable */
	SLUICE_CNT_FLOWS_TLS,		/* flows classified from a ClientHello */
	SLUICE_CNT_FLOWS_HTTP,		/* flows classified from an HTTP request */
	SLUICE_CNT_TLS_SNI_FOUND,	/* ClientHello with a server name */
	SLUICE_CNT_TLS_NO_SNI,		/* complete ClientHello without one */
	SLUICE_CNT_TLS_TRUNCATED,	/* ClientHello continues past this packet */
	SLUICE_CNT_TLS_MALFORMED,	/* lengths that contradict each other */
	SLUICE_CNT_NOT_TLS,		/* payload that is neither TLS nor HTTP */
	SLUICE_CNT_HTTP_HOST_FOUND,
	SLUICE_CNT_HTTP_NO_HOST,	/* request without a usable Host header */
	SLUICE_CNT_HTTP_TRUNCATED,	/* request headers continue past this packet */
	SLUICE_CNT_GAVE_UP,		/* flows whose inspection window ran out */
	SLUICE_CNT_FLOWS_EXPIRED,	/* idle flows found and restarted */
	SLUICE_CNT_FLOWS_CREATED,	/* new flow table keys; minus the entries: evictions */
	SLUICE_CNT_FLOWS_REOPENED,	/* known flows a held SYN's connection took over (flow.h) */
	SLUICE_CNT_TLS_REASSEMBLED,	/* ClientHellos found across segments or records */
	SLUICE_CNT_TLS_ECH,		/* ClientHellos offering Encrypted Client Hello (outer SNI matched) */
	SLUICE_CNT_QUIC_DATAGRAMS,	/* QUIC Initial datagrams sent to the controller */
	SLUICE_CNT_QUIC_RING_FULL,	/* ...or not, the ring being full: the flow passes */
	SLUICE_CNT_QUIC_REPEATS,	/* ...or not, repeating one sent already byte for byte (quic.h) */
	SLUICE_CNT_FRAGMENTS,		/* IPv4 fragments and IPv6 Fragment-header fragments seen */
	SLUICE_CNT_FRAG_DATAGRAMS,	/* datagrams whose fragments began to be gathered */
	SLUICE_CNT_FRAG_REASSEMBLED,	/* ...and were gathered whole, then judged */
	SLUICE_CNT_FRAG_TIMEOUTS,	/* ...or were found older than SLUICE_FRAG_TIMEOUT_NS, and restarted */
	SLUICE_CNT_FRAG_OVERSIZE,	/* ...or outgrew SLUICE_FRAG_BYTES or SLUICE_FRAG_PIECES_MAX: passed unread */
	SLUICE_CNT_FRAG_OVERLAPS,	/* ...or overlapped or contradicted themselves: discarded, as the receiver does */
	SLUICE_CNT_FRAG_DROPPED,	/* fragments dropped under inspection.fragments: drop */
	SLUICE_CNT_FRAG_LOW_TTL,	/* fragments not gathered: their TTL says they expire before the server */
	SLUICE_CNT_TRIGGERS_FIRED,	/* flows whose rule's trigger count was reached: its action applies */
	SLUICE_CNT_PROXY_HEADERS,	/* PROXY protocol headers stepped over (inspection.proxy_protocol) */
	/* Client segments of young flows the server would not take as they
	 * came (receiver.h): not read, or (syn_data, conflict) read again. */
	SLUICE_CNT_EVASION_BAD_CHECKSUM,	/* a wrong TCP checksum, or IPv4 header checksum */
	SLUICE_CNT_EVASION_TCP_AUTH_OPTION,	/* an MD5 signature (RFC 2385) or TCP-AO option the server has no key for */
	SLUICE_CNT_EVASION_NO_ACK,		/* data without ACK after the SYN */
	SLUICE_CNT_EVASION_RST,			/* data in a segment with RST (never delivered) */
	SLUICE_CNT_EVASION_PAWS,		/* a timestamp older than the flow's last (RFC 7323 PAWS) */
	SLUICE_CNT_EVASION_OUT_OF_WINDOW,	/* sequence numbers all before the stream, or far past it */
	SLUICE_CNT_EVASION_HOP_BY_HOP,		/* an IPv6 Hop-by-Hop header not first (or a second one) */
	SLUICE_CNT_EVASION_LOW_TTL,		/* a TTL (hop limit) below the SYN's by more than the margin */
	SLUICE_CNT_EVASION_SYN_DATA,		/* the SYN's data, sent again at the same place, said otherwise */
	SLUICE_CNT_EVASION_CONFLICT,		/* two copies of the same stream bytes disagreed */
	SLUICE_CNT_EVASION_URGENT,		/* an urgent byte the server takes out of the stream */
	SLUICE_CNT_EVASION_BAD_ACK,		/* an ACK number for bytes the server never sent, or before its first */
	SLUICE_CNT_EVASION_FORGED_SERVER,	/* a "server" segment on the client's interface, the server's being another */
	SLUICE_CNT_EVASION_TRUNCATED,		/* an IP length past the frame's end, or a UDP length that
						 * does not fit or cuts an Initial short: dropped */
	SLUICE_CNT_EVASION_IPV6_EXTENSION,	/* an IPv6 extension header a receiver refuses (an option it
						 * must discard, padding past 7 bytes, a routing header) */
	SLUICE_CNT_EVASION_IP_HEADER,		/* an IP header a receiver refuses, its checksum and length aside:
						 * a wrong version, an IPv4 source route, CIPSO or malformed option */
	SLUICE_CNT_STAGE_MISSED,		/* tail calls into a stage that returned (common.h call_stage()): no such stage loaded */
	SLUICE_CNT_LOW_TTL_CONFIRMED,		/* server ACKs that confirmed low-TTL client bytes: read after all (tentative.h) */
	SLUICE_CNT_MAX,
};

/* Encapsulations the data plane opens, one level deep, to judge the flow
 * inside: the flow key is the inner flow's, and a verdict drops or polices
 * the outer packet (inspection.tunnels; bit 1 << kind of
 * sluice_config.closed_tunnels closes a kind). */
enum sluice_tunnel {
	SLUICE_TUNNEL_NONE = 0,
	SLUICE_TUNNEL_IPIP = 1,		/* IPv4 or IPv6 in IPv4 or IPv6 (IP protocols 4 and 41) */
	SLUICE_TUNNEL_GRE = 2,		/* IP protocol 47: IPv4, IPv6 or Ethernet (bridging) inside */
	SLUICE_TUNNEL_GTPU = 3,		/* GTP-U G-PDUs, UDP port 2152 */
	SLUICE_TUNNEL_VXLAN = 4,	/* UDP port 4789: an Ethernet frame inside */
	SLUICE_TUNNEL_QINQ = 5,		/* two VLAN tags, or an 802.1ad service tag */
	SLUICE_TUNNEL_KINDS = 6,
};

/* What became of a packet of each kind (tunnel_counters, index
 * kind * SLUICE_TUNNELLED_OUTCOMES + outcome). */
enum sluice_tunnel_outcome {
	SLUICE_TUNNELLED_OPENED = 0,	/* its inner TCP or UDP packet was read and judged */
	SLUICE_TUNNELLED_UNREAD = 1,	/* it carries no TCP or UDP over IP (signalling, ARP, ICMP,
					 * a further encapsulation): passes */
	SLUICE_TUNNELLED_MALFORMED = 2,	/* truncated or contradictory headers: passes unread */
	SLUICE_TUNNELLED_CLOSED = 3,	/* a kind the policy does not open: judged as the outer packet */
	SLUICE_TUNNELLED_OUTCOMES = 4,
};

/* Both directions of a flow share one key: the (address, port) pair that
 * sorts lower (by address, then port) is always stored first. */
struct flow_key {
	__u8 addr_lo[16];		/* IPv4 as ::ffff:a.b.c.d */
	__u8 addr_hi[16];
	__u16 port_lo;			/* network byte order */
	__u16 port_hi;
	__u8 l4proto;			/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 ipv6;			/* 1: IPv6 (whose addresses may look IPv4 mapped: a flow of its own) */
	__u8 pad[2];
};

/* The key of the flows table: 16 bytes, which a flow's every packet hashes
 * (a 40-byte flow_key cost 0.56 empty XDP programs more a lookup,
 * bench/packet_pieces.py). An IPv4 flow's key holds its own addresses and
 * ports, the lower end first as in flow_key (so client_is_hi means the
 * same in both). Two IPv6 addresses do not fit: an IPv6 flow is numbered
 * when first seen (ipv6_flows holds its flow_key's number), by a count that
 * never repeats, so that no two flows share an entry, whatever addresses
 * an adversary picks, and a number the index forgot is never given again. */
struct flow_id {
	__u32 lo;			/* IPv4: the lower end's address (flow_key.addr_lo[12..16]);
					 * IPv6: the low half of its number */
	__u32 hi;			/* IPv4: the higher end's address; IPv6: the number's high half */
	__u16 port_lo;			/* network byte order, as in flow_key */
	__u16 port_hi;
	__u8 l4proto;			/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 ipv6;			/* 1: an IPv6 flow, lo and hi its number, never 0 */
	__u16 cpu;			/* IPv6: the CPU whose count numbered it (each CPU counts its own) */
};

struct flow_state {
	__u64 last_seen;		/* flow_now() (jiffies, flow.h) of the last refresh */
	__u32 rule_id;			/* 0: no rule */
	__u8 state;			/* enum sluice_flow_state */
	__u8 action;			/* enum sluice_action, effective (monitor -> NONE) */
	__u8 proto;			/* enum sluice_proto */
	__u8 payload_packets;		/* payload packets inspected so far */
	__u8 client_is_hi;		/* 1: the client is the key's hi side */
	__u8 client_known;		/* 1: the client is known: it sent the SYN, or the name */
	__u16 payload_bytes;		/* client payload inspected so far (saturates) */
	__u8 opened_by_client;		/* 1: sluice saw the client's SYN open the flow */
	__u8 streaming;			/* 1: its ClientHello is being reassembled (streams) */
	__u8 trigger_pending;		/* 1: counting toward its rule's trigger; action held back (NONE) */
	__u8 ttl_floor;			/* a client segment's TTL (hop limit) this far above, less ttl_margin,
					 * reaches the server: its SYN's, or lower once the server
					 * acknowledged bytes sent at a lower one (tentative.h); 0: no SYN seen */
	__u32 stream_base;		/* client sequence number of stream offset 0 */
	__u32 trigger_count;		/* what the rule's trigger counts, in its direction, so far */
	__u32 ts_recent;		/* the client's last accepted TSval (SLUICE_RECEIVER_TS_KNOWN) */
	__u16 syn_data_len;		/* bytes the SYN carried, and their ones' complement sum, */
	__u16 syn_data_sum;		/* ...to tell a resend from a decoy (SLUICE_RECEIVER_SYN_DATA) */
	__u8 receiver;			/* SLUICE_RECEIVER_* (receiver.h) */
	__u8 held_syn_ttl;		/* the held SYN's TTL (SLUICE_RECEIVER_SYN_HELD) */
	__u16 urgent_at;		/* the client's urgent byte, by stream offset, at most 65535 (SLUICE_RECEIVER_URGENT) */
	__u32 opening_rule_id;		/* the rule that judged it at its opening packet (SLUICE_CFG_OPENING_RULES), 0: none */
	/* Per direction, for throttle and shape in flow scope: the time at
	 * which the flow's bucket is empty again (throttle, GCRA) or its next
	 * packet may leave (shape, EDT). */
	__u64 next_ns[SLUICE_DIRS];
	__u32 held_syn_seq;		/* the sequence number of a SYN held (SLUICE_RECEIVER_SYN_HELD) */
	__u32 server_isn;		/* the server's SYN-ACK's sequence number (SLUICE_SERVER_SEQ), */
	__u32 server_end;		/* ...and the highest it has sent up to, while the flow is inspected */
	__u8 tentative_ttl;		/* the TTL of the client's bytes held tentatively in its stream, 0: none */
	__u8 server;			/* SLUICE_SERVER_*: what sluice knows of the server's segments (receiver.h) */
	__u16 client_arm;		/* the interface the client's SYN came in on: its ifindex, mod 2^16 (flow.h) */
};

/* The same clocks for client and rule scope. */
struct rate_clocks {
	__u64 next_ns[SLUICE_DIRS];
};

struct client_clock_key {
	__u32 rule_id;
	__u32 pad;
	__u8 client[16];		/* IPv4 as ::ffff:a.b.c.d */
};

/* Key of the client class trie (a prefix of the client's address) and of
 * the destination trie (of the server's). */
struct client_prefix {
	__u32 prefixlen;		/* IPv4 /n is stored as 96 + n */
	__u8 addr[16];			/* IPv4 as ::ffff:a.b.c.d */
};

/* The rules that may apply to the names of one domain entry (set_id) for
 * the clients of one class (class_id 0: clients in no class, and the
 * fallback of every class without a set of its own), most preferred first:
 * exemptions, then the most specific domain, then the most specific class,
 * then rule order. The first rule whose conditions hold is chosen. */
struct rule_set_key {
	__u32 set_id;
	__u32 class_id;
};

struct rule_set {
	__u32 rule_ids[SLUICE_RULE_SET_MAX];	/* 0 ends the list */
};

/* Key of the domain rule hash (whose values are rule set ids): two 64-bit
 * hashes of the name read right to left (see domain_match.h and
 * controller/names.py), its length and the match kind. Hashing right to
 * left yields every label-boundary suffix of a name in one pass, so
 * matching costs one lookup per label whatever the number of rules. */
struct name_key {
	__u64 hash_fnv;
	__u64 hash_mix;
	__u32 len;
	__u32 kind;			/* enum sluice_match_kind */
};

/* The clock a policer reads (rate_limit.clock). A token bucket needs a
 * clock only as fine as it is deep: on a clock that moves by ticks, tokens
 * arrive in lumps of a tick's worth, and a bucket that holds several lumps
 * passes the same bytes over any interval, give or take a lump, as on the
 * precise clock, which costs more than an empty XDP program on every
 * packet. The controller picks (controller/clocks.py); the pacer (shape)
 * always reads the precise clock, which fq compares departures with. */
enum sluice_rate_clock {
	SLUICE_CLOCK_PRECISE = 0,	/* bpf_ktime_get_ns(): a bucket shallower than a few ticks */
	SLUICE_CLOCK_COARSE = 1,	/* coarse_now_ns() in common.h: a tick's resolution */
};

/* A rate in one direction. Time per byte is kept in picoseconds so that
 * 400 gbit/s (20 ps a byte) and 8 kbit/s (1 ms a byte) are both exact. */
struct rate_limit {
	__u64 ps_per_byte;		/* 0: this direction is not limited */
	__u64 burst_ns;			/* the burst in bytes, as time at the rate */
	__u32 clock;			/* enum sluice_rate_clock, of the policer (throttle) */
	__u32 pad;
};

/* An inclusive range of server ports, in host byte order. */
struct port_range {
	__u16 first;
	__u16 last;
};

struct rule_info {
	__u32 action;			/* enum sluice_action */
	__u32 flags;			/* SLUICE_RULE_* */
	__u32 scope;			/* enum sluice_scope */
	__u32 port_ranges;		/* ports[] in use; 0: any server port */
	struct port_range ports[SLUICE_PORT_RANGES_MAX];
	__u64 rollout_threshold;	/* see SLUICE_ROLLOUT_ALL */
	struct rate_limit limit[SLUICE_DIRS];	/* throttle, shape */
	__u64 delay_ns;			/* delay: added to every packet */
	__u64 jitter_ns;		/* delay: plus uniform random 0..jitter */
	__u64 horizon_ns;		/* shape, delay: drop a packet due later than this */
	__u32 block_method;		/* block: enum sluice_block_method */
	/* Conditions on what the flow is, beside its name: */
	__u32 protocols;		/* bit 1 << enum sluice_proto; 0: any */
	__u32 ech;			/* enum sluice_ech_condition */
	__u32 alpn_ids;			/* bits of alpn_ids' values: the ClientHello offers one; 0: any */
	__u32 destination_id;		/* the server's destination set (destinations trie); 0: any */
	/* When the action starts (enum sluice_trigger_unit): */
	__u32 trigger_unit;
	__u32 trigger_direction;	/* enum sluice_direction counted */
	__u32 trigger_at;		/* the count after which the action applies */
};

/* Key of the ALPN id map: one protocol id a ClientHello may offer, zero
 * padded; the value is its bit in rule_info.alpn_ids. */
struct alpn_key {
	__u8 len;
	__u8 id[SLUICE_ALPN_ID_BYTES];
};

struct direction_stats {
	__u64 packets;			/* packets judged under the rule */
	__u64 bytes;
	__u64 dropped_packets;		/* of those, dropped (block, policer, horizon) */
	__u64 dropped_bytes;
	__u64 delayed_packets;		/* given a later departure time (shape, delay) */
};

/* Per rule, per CPU. Index 0 counts packets that no rule judges; their
 * direction is counted as up where the client is not known. */
struct rule_stats {
	__u64 flows;			/* flows classified under this rule */
	struct direction_stats dir[SLUICE_DIRS];
	__u64 resets;			/* TCP RSTs sent to clients (block method reset or page) */
	__u64 pages;			/* 451 pages sent to clients (block method page) */
};

/* A block page: the whole HTTP response (status line, headers, body) that
 * answers a plain-HTTP request under a rule with method page, by rule id.
 * It goes out in one segment, so it must fit in one at any MTU sluice
 * meets (1280, IPv6's minimum, less headers). */
#define SLUICE_PAGE_BYTES_MAX 1024

struct block_page {
	__u32 len;			/* bytes[] in use */
	__u32 csum;			/* ones' complement sum of bytes[0..len) as 16-bit big-endian words
					 * (an odd last byte padded with zero): the data plane adds the headers' */
	__u8 bytes[SLUICE_PAGE_BYTES_MAX];
};

/* The controller sizes the block page map to the policy
 * (-DSLUICE_BLOCK_PAGES_MAX=n); this is the size without pages. */
#define SLUICE_BLOCK_PAGES_DEFAULT 1

struct sluice_config {
	__u64 flow_idle_jiffies;	/* a flow idle this many ticks of jiffy_ns starts afresh */
	__u32 window_packets;		/* payload packets inspected per flow... */
	__u32 flags;			/* SLUICE_CFG_* */
	__u64 clock_ns;			/* non-zero: the data plane's time, frozen (tests) */
	__u32 window_bytes;		/* ...or payload bytes, whichever runs out first */
	__u32 closed_tunnels;		/* bit 1 << enum sluice_tunnel: an encapsulation not opened */
	__u64 rollout_key[2];		/* SipHash key of the rollout hash */
	__u32 ttl_margin;		/* see SLUICE_TTL_MARGIN_DEFAULT */
	__u32 generation;		/* its own index in config: the policy maps its packets read */
	__u64 clock_tick_ns;		/* with clock_ns: the coarse clock's tick, which it reads
					 * clock_ns rounded down to (tests); 0: clock_ns exactly */
	__u64 jiffy_ns;			/* the kernel's tick (1/CONFIG_HZ s): a jiffy, in which flows idle */
	__u64 datagram_key[2];		/* SipHash key of QUIC datagram signatures: random, the data plane's own */
};

/* Client bytes of a young flow kept to reassemble a ClientHello that spans
 * segments (a power of two): TLS allows a ClientHello of up to 16 KB in one
 * record, and browsers' post-quantum ones take about 2 KB. */
#define SLUICE_STREAM_BYTES 16384

/* Flows reassembling at once (LRU): each holds SLUICE_STREAM_BYTES and a
 * little more, only while its ClientHello is incomplete. */
#define SLUICE_STREAMS_MAX 1024

/* The inspection window's byte count lives in a __u16 of flow_state. */
#define SLUICE_WINDOW_BYTES_MAX 65535

#define SLUICE_CFG_NO_REASSEMBLY 2	/* judge each segment alone, as simpler middleboxes do */
#define SLUICE_CFG_DROP_FRAGMENTS 4	/* drop the fragments of flows still being inspected */
#define SLUICE_CFG_SERVER_RESETS 8	/* sluice_tc_reset is on tc ingress: block replies go up to it,
					 * which resets the server too (block_reply.h) */
#define SLUICE_CFG_UNNAMED_RULES 16	/* some rule has no name condition: flows no domain entry names
					 * go to SLUICE_RULE_SET_UNNAMED */
#define SLUICE_CFG_WHOLE_HELLO 32	/* some rule looks past the name (ECH, ALPN): a ClientHello is
					 * judged whole, never from a first segment that holds its name */
#define SLUICE_CFG_PROXY_PROTOCOL 64	/* step over a PROXY protocol header at a stream's start */
#define SLUICE_CFG_NO_RECEIVER_MODEL 128	/* inspection.on_evasion: ignore: every client segment counts,
					 * the first copy of a range wins (receiver.h is skipped) */
#define SLUICE_CFG_BLOCK_EVASION 256	/* inspection.on_evasion: block: a flow caught at evasion is dropped */
#define SLUICE_CFG_OPENING_RULES 512	/* some rule applies to any flow (no name, protocol, ECH or ALPN
					 * condition): each new flow is judged at its opening packet,
					 * the client's SYN or a UDP flow's first datagram */
#define SLUICE_CFG_QUIC_AT_OPENING 1024	/* no rule that may apply to a QUIC flow looks at its hello (its
					 * name, ECH, ALPN): a QUIC flow is judged at its first Initial,
					 * as a flow of protocol quic (quic_judged_at_opening()) */
#define SLUICE_CFG_EVENTS 1		/* a controller reads the rings: emit a classification_event
					 * per flow, and send QUIC Initials to be read */
#define SLUICE_CFG_RINGS_POLLED 2048	/* the rings' reader looks at them after every frame it runs
					 * (sluice replay): records go without a wakeup (ring_flags()) */

/* IP datagrams that arrive as fragments are gathered (ip_frag.h) up to this
 * many bytes of IP payload (a power of two): enough for a post-quantum
 * ClientHello (about 1.8 KB) or a QUIC Initial (1.2-1.5 KB) in one datagram. */
#define SLUICE_FRAG_BYTES 4096

/* Fragments of one datagram held apart at most (each fragment but the last
 * carries a multiple of 8 bytes; a receiver accepts any number of them). */
#define SLUICE_FRAG_PIECES_MAX 32

/* Datagrams being gathered at once (LRU: the least recently touched goes). */
#define SLUICE_FRAGS_MAX 1024

/* A datagram not whole this long after its first fragment is given up, as
 * Linux gives up its own reassembly (net.ipv4.ipfrag_time, 30 s). */
#define SLUICE_FRAG_TIMEOUT_NS 30000000000

/* The signatures of the QUIC datagrams a flow handed to the controller
 * (quic.h), the last SLUICE_QUIC_SIGNATURES of them: a datagram that
 * repeats one of them byte for byte is not handed over again. */
#define SLUICE_QUIC_SIGNATURES 8
struct quic_signatures {
	__u64 signature[SLUICE_QUIC_SIGNATURES];
	__u32 count;			/* signatures written so far; the next goes at count % SLUICE_QUIC_SIGNATURES */
	__u32 pad;
};

/* QUIC flows whose signatures are kept at once (LRU): a flow's go when its
 * Initials are long read, or the flow is gone. */
#define SLUICE_QUIC_SIGNED_FLOWS_MAX 16384
#define SLUICE_QUIC_VERSIONS_MAX 64	/* QUIC versions the controller reads (quic_versions) */

/* A client's QUIC Initial datagram, for the controller to decrypt: the
 * kernel cannot (the keys come from HKDF over the connection id, the
 * payload is AES-GCM), so the flow passes meanwhile, and the controller
 * writes the verdict into the flow's entry once it has the name. */
struct quic_datagram {
	struct flow_key key;
	__u8 client_is_hi;
	__u8 pad[3];
	__u32 len;			/* bytes[] in use */
	__u8 bytes[SLUICE_QUIC_DATAGRAM_MAX];
};

/* Sent once per classified flow, when SLUICE_CFG_EVENTS is set. */
struct classification_event {
	struct flow_key key;
	__u32 rule_id;
	__u32 class_id;			/* the client's class, 0: none */
	__u8 action;			/* enum sluice_action, as configured */
	__u8 proto;			/* enum sluice_proto */
	__u8 client_is_hi;
	__u8 name_len;
	char name[SLUICE_NAME_MAX + 1];
	__u8 provisional;		/* 1: named from its SYN's data, which its next segment may undo */
	/* Its ClientHello's facts (TLS; 0 otherwise), for the controller to
	 * judge the flow again by them after a reload: */
	__u8 ech;			/* 1: it offers Encrypted Client Hello */
	__u8 alpn_len;			/* bytes of alpn[] in use */
	__u8 opening;			/* 1: settled at its opening packet by a rule for any flow, nameless */
	__u8 alpn[SLUICE_ALPN_BYTES];	/* its ALPN extension body, from its start */
};

/* A chunk of a capture's frames (replay_chunk), written by the controller
 * through a memory mapping of the map. */
struct replay_chunk {
	__u32 offset[SLUICE_REPLAY_CHUNK_FRAMES];	/* of each frame in bytes[] */
	__u32 len[SLUICE_REPLAY_CHUNK_FRAMES];
	/* Room for a frame the driver copies past SLUICE_REPLAY_CHUNK_BYTES:
	 * the verifier knows only that offset and len are within their masks. */
	__u8 bytes[SLUICE_REPLAY_CHUNK_BYTES + SLUICE_REPLAY_FRAME_BYTES];
};

/* Where the replay driver is in its chunk (replay_batch). */
struct replay_batch {
	__u32 next;			/* the frame of replay_chunk it puts in the packet next */
	__u32 failed;			/* frames that did not reach sluice_xdp: the chunk's run is void */
	__u32 stopped;			/* 1: the frame before handed a QUIC datagram over: the test run
					 * ends, for the controller to read it before the next frame */
	__u32 watching;			/* 1: cpu and datagrams_sent hold a reading */
	__u32 cpu;			/* where datagrams_sent was read */
	__u32 pad;
	__u64 datagrams_sent;		/* SLUICE_CNT_QUIC_DATAGRAMS there, before the frame before ran */
};

#endif /* SLUICE_ABI_H */
