/* SPDX-License-Identifier: GPL-2.0-only */
/* replay_driver.c - run a chunk of a capture's frames through sluice_xdp,
 * many a test run, for sluice replay (controller/replay_batch.py).
 *
 * A BPF_PROG_TEST_RUN costs about 2 us of the kernel's own, several times
 * what sluice_xdp spends on most frames. So replay writes a chunk of the
 * capture, as the file holds it, into replay_chunk with each frame's place,
 * and runs this program with repeat = the frames to run: each repetition
 * puts the next frame in the packet and tail-calls sluice_xdp, which runs
 * on it as it would on an interface, with the same maps and rings. Every
 * frame runs: one of a flow settled long before costs the kernel less than
 * a Python step to leave it out would cost replay. The controller reads the
 * rings after each test run, and wherever the frame before handed a QUIC
 * datagram over: it settles the flow from it, which decides how the flow's
 * next datagrams run. The driver sees that from the program's counter of
 * datagrams sent, and ends the test run there.
 */
#ifndef SLUICE_CTX_SKB
#include <uapi/linux/bpf.h>

#include "sluice_abi.h"
#include "maps.h"

/* A ring record is its 8-byte header and the event, rounded up to 8 bytes. */
_Static_assert(SLUICE_REPLAY_BATCH_FRAMES * SLUICE_REPLAY_EVENTS_PER_FRAME *
	       (sizeof(struct classification_event) + 16) <= SLUICE_EVENT_RING_BYTES,
	       "a replay batch's events must fit in the events ring");

int sluice_replay_driver(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct replay_batch *batch = replay_batch.lookup(&zero);

	if (!batch || batch->stopped)
		return XDP_ABORTED;
	/* Per CPU, and a test run may move to another CPU between repetitions:
	 * a count read on another CPU cannot tell, so it stops the run too. */
	__u32 counter = SLUICE_CNT_QUIC_DATAGRAMS, cpu = bpf_get_smp_processor_id();
	__u64 *datagrams_sent = counters.lookup(&counter);

	if (!datagrams_sent) {
		batch->failed += 1;
		return XDP_ABORTED;
	}
	if (batch->watching && (batch->cpu != cpu || batch->datagrams_sent != *datagrams_sent)) {
		batch->stopped = 1;
		return XDP_ABORTED;
	}
	batch->watching = 1;
	batch->cpu = cpu;
	batch->datagrams_sent = *datagrams_sent;
	__u32 index = batch->next;
	struct replay_chunk *chunk = replay_chunk.lookup(&zero);

	if (!chunk || index >= SLUICE_REPLAY_CHUNK_FRAMES) {
		batch->failed += 1;
		return XDP_ABORTED;
	}
	batch->next = index + 1;
	/* Masked: bpf_xdp_store_bytes() takes only a place and a length the
	 * verifier knows are within the value (bytes[] has room past the
	 * chunk's end for the longest). The controller keeps a chunk within
	 * SLUICE_REPLAY_CHUNK_BYTES, and runs longer frames alone. */
	__u32 offset = chunk->offset[index] & (SLUICE_REPLAY_CHUNK_BYTES - 1);
	__u32 len = chunk->len[index] & (SLUICE_REPLAY_FRAME_BYTES - 1);

	/* The packet is as long as the frame before left it (a block reply may
	 * have grown it): grown or cut to this frame's length. sluice_xdp moves
	 * only the packet's end, never its start. */
	if (len < sizeof(struct ethhdr) || bpf_xdp_adjust_tail(ctx, (int)len - (int)bpf_xdp_get_buff_len(ctx)) ||
	    bpf_xdp_store_bytes(ctx, 0, chunk->bytes + offset, len)) {
		batch->failed += 1;
		return XDP_ABORTED;
	}
	replay_target.call(ctx, 0);
	/* Reached only if the tail call failed. */
	batch->failed += 1;
	return XDP_ABORTED;
}
#endif /* SLUICE_CTX_SKB */
