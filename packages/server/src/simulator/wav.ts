import { seededRandom } from "./random.js";

/**
 * A short, real telephone-quality recording: 16-bit mono PCM WAV (RIFF), 8 kHz by default.
 * It sounds like a call: two ringback bursts (440 + 480 Hz, the North American ringback pair),
 * then alternating "voices" — amplitude-modulated tones at speech-like pitches — over faint line
 * noise. Deterministic for a seed. Three seconds at 8 kHz is 48 KB.
 */
export function synthesizeWav(
  opts: { seconds?: number; sampleRate?: 8000 | 16000; seed?: number } = {},
): Buffer {
  const rate = opts.sampleRate ?? 8000;
  const seconds = opts.seconds ?? 3;
  const n = Math.round(rate * seconds);
  const rnd = seededRandom(opts.seed ?? 1);
  const data = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) {
    const t = i / rate;
    let v = (rnd() - 0.5) * 0.02; // line noise
    if (t < 1) {
      // Ringback: 0.4 s on, 0.1 s off, twice.
      if (t % 0.5 < 0.4) v += 0.25 * (Math.sin(2 * Math.PI * 440 * t) + Math.sin(2 * Math.PI * 480 * t));
    } else {
      // Turns of ~0.6 s between a lower and a higher "voice"; syllables at ~4 Hz.
      const turn = Math.floor((t - 1) / 0.6) % 2;
      const pitch = turn === 0 ? 140 : 220;
      const syllables = 0.5 + 0.5 * Math.sin(2 * Math.PI * 4 * t);
      const voice =
        Math.sin(2 * Math.PI * pitch * t) +
        0.5 * Math.sin(2 * Math.PI * pitch * 2 * t) +
        0.25 * Math.sin(2 * Math.PI * pitch * 3 * t);
      v += 0.3 * syllables * voice;
    }
    data.writeInt16LE(Math.max(-32768, Math.min(32767, Math.round(v * 32767 * 0.8))), i * 2);
  }
  return Buffer.concat([wavHeader(data.length, rate), data]);
}

/** The 44-byte canonical RIFF/WAVE header for 16-bit mono PCM. */
export function wavHeader(dataBytes: number, rate: number): Buffer {
  const h = Buffer.alloc(44);
  h.write("RIFF", 0, "ascii");
  h.writeUInt32LE(36 + dataBytes, 4);
  h.write("WAVE", 8, "ascii");
  h.write("fmt ", 12, "ascii");
  h.writeUInt32LE(16, 16); // fmt chunk size
  h.writeUInt16LE(1, 20); // PCM
  h.writeUInt16LE(1, 22); // mono
  h.writeUInt32LE(rate, 24);
  h.writeUInt32LE(rate * 2, 28); // byte rate
  h.writeUInt16LE(2, 32); // block align
  h.writeUInt16LE(16, 34); // bits per sample
  h.write("data", 36, "ascii");
  h.writeUInt32LE(dataBytes, 40);
  return h;
}
