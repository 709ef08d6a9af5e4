// Device page-table updates, ordered on the GPU queue: each op is (page, clear, set); the kernel
// clears then sets bits of the PTE with atomics, so a DIRTY bit that a kernel set is never lost to a
// host write, and returns the old PTE (the dirty bit a revoke must see, as ptep_clear_flush does).

struct UpdateParams {
  count: u32,
  pages: u32,
  pad0: u32,
  pad1: u32,
}

@group(0) @binding(0) var<uniform> u: UpdateParams;
@group(0) @binding(1) var<storage, read_write> pte: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read> ops: array<u32>;
@group(0) @binding(3) var<storage, read_write> olds: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i >= u.count) {
    return;
  }
  let page = ops[i * 3u];
  if (page >= u.pages) {
    return;
  }
  let old = atomicAnd(&pte[page], ~ops[i * 3u + 1u]);
  let bits = ops[i * 3u + 2u];
  if (bits != 0u) {
    atomicOr(&pte[page], bits);
  }
  olds[i] = old;
}
