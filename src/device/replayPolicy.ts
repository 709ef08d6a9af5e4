/**
 * When the fault engine replays (replay.ts): NVIDIA UVM's four fault replay policies
 * (uvm_gpu_replayable_faults.h, uvm_perf_fault_replay_policy_t), in its order. A module of its own
 * so that the command line parses `--replay-policy` without loading the device layer.
 */
import { HmmlabError } from '../errors.ts';

export const REPLAY_POLICIES = ['block', 'batch', 'batch-flush', 'once'] as const;
export type ReplayPolicy = (typeof REPLAY_POLICIES)[number];
/**
 * UVM defaults to batch-flush (a replay there lets the SMs whose faults were serviced go on while
 * others wait); here a launch runs to its end before its faults are read, every replay is a
 * relaunch of the chunk's unfinished work, and replaying once after the whole fetch costs the
 * fewest (`hmmlab bench faults` measures the four).
 */
export const DEFAULT_REPLAY_POLICY: ReplayPolicy = 'once';
/** UVM's va_block, the unit of the block replay policy. */
export const VA_BLOCK_BYTES = 2 << 20;

export function parseReplayPolicy(text: string, option = '--replay-policy'): ReplayPolicy {
  if ((REPLAY_POLICIES as readonly string[]).includes(text)) return text as ReplayPolicy;
  throw new HmmlabError(
    'EINVAL',
    `bad ${option} "${text}": expected one of ${REPLAY_POLICIES.join(', ')} (NVIDIA UVM's fault replay policies)`,
  );
}
