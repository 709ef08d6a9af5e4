// Device frames: `frames_per_buf` frames of `page_words` words in each of up to four storage
// buffers (one binding cannot hold a large pool). A frame number selects the buffer and the slot.
// Words are atomics so that the same bindings serve loads, stores and atomicAdd.

@group(0) @binding(5) var<storage, read_write> frames0: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> frames1: array<atomic<u32>>;
@group(0) @binding(7) var<storage, read_write> frames2: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read_write> frames3: array<atomic<u32>>;

fn frame_slot(frame: u32, word: u32) -> u32 {
  return (frame % p.frames_per_buf) * p.page_words + word;
}

fn frame_load(frame: u32, word: u32) -> u32 {
  let i = frame_slot(frame, word);
  switch (frame / p.frames_per_buf) {
    case 0u: { return atomicLoad(&frames0[i]); }
    case 1u: { return atomicLoad(&frames1[i]); }
    case 2u: { return atomicLoad(&frames2[i]); }
    default: { return atomicLoad(&frames3[i]); }
  }
}

fn frame_store(frame: u32, word: u32, value: u32) {
  let i = frame_slot(frame, word);
  switch (frame / p.frames_per_buf) {
    case 0u: { atomicStore(&frames0[i], value); }
    case 1u: { atomicStore(&frames1[i], value); }
    case 2u: { atomicStore(&frames2[i], value); }
    default: { atomicStore(&frames3[i], value); }
  }
}

fn frame_add(frame: u32, word: u32, value: u32) {
  let i = frame_slot(frame, word);
  switch (frame / p.frames_per_buf) {
    case 0u: { atomicAdd(&frames0[i], value); }
    case 1u: { atomicAdd(&frames1[i], value); }
    case 2u: { atomicAdd(&frames2[i], value); }
    default: { atomicAdd(&frames3[i], value); }
  }
}
