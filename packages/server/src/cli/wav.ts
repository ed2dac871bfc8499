import { wavHeader } from "../simulator/wav.js";

/**
 * A small valid WAV file (PCM, 8 kHz, mono, 16-bit): a short tone, so `trigger call.recording`
 * uploads something every audio player and the server's content sniffing accept.
 */
export function toneWav(seconds = 0.25, hz = 440): Buffer {
  const rate = 8000;
  const samples = Math.round(rate * seconds);
  const data = Buffer.alloc(samples * 2);
  for (let i = 0; i < samples; i++)
    data.writeInt16LE(Math.round(Math.sin((2 * Math.PI * hz * i) / rate) * 8000), i * 2);
  return Buffer.concat([wavHeader(data.length, rate), data]);
}
