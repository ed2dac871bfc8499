import BetterSqlite3 from "better-sqlite3";

/**
 * Pre-signed URLs name KLEN_PUBLIC_URL (http://localhost:PORT by default); tests fetch the same
 * path and query from the 127.0.0.1 address the server listens on.
 */
export function onServer(serverUrl: string, presigned: string): string {
  const u = new URL(presigned);
  return `${serverUrl}${u.pathname}${u.search}`;
}

/** The server's blob signing key, read from a SQLite database file (to forge test URLs). */
export function signingKeyOf(dbFile: string): Buffer {
  const db = new BetterSqlite3(dbFile, { readonly: true });
  try {
    const row = db.prepare("SELECT value FROM settings WHERE name = 'blob_signing_key'").get() as {
      value: string;
    };
    return Buffer.from(row.value, "base64");
  } finally {
    db.close();
  }
}

export interface Wav {
  format: number;
  channels: number;
  sampleRate: number;
  bitsPerSample: number;
  dataBytes: number;
  durationSeconds: number;
}

/** Parses a RIFF/WAVE file's chunks; throws when the structure is not valid. */
export function parseWav(buf: Buffer): Wav {
  if (buf.toString("ascii", 0, 4) !== "RIFF" || buf.toString("ascii", 8, 12) !== "WAVE")
    throw new Error("not RIFF/WAVE");
  if (buf.readUInt32LE(4) !== buf.length - 8) throw new Error("RIFF size does not match the file");
  let off = 12;
  let fmt: Omit<Wav, "dataBytes" | "durationSeconds"> | undefined;
  while (off + 8 <= buf.length) {
    const id = buf.toString("ascii", off, off + 4);
    const size = buf.readUInt32LE(off + 4);
    if (id === "fmt ") {
      fmt = {
        format: buf.readUInt16LE(off + 8),
        channels: buf.readUInt16LE(off + 10),
        sampleRate: buf.readUInt32LE(off + 12),
        bitsPerSample: buf.readUInt16LE(off + 22),
      };
    } else if (id === "data") {
      if (!fmt) throw new Error("data before fmt");
      if (off + 8 + size > buf.length) throw new Error("data chunk runs past the end");
      const bytesPerSecond = fmt.sampleRate * fmt.channels * (fmt.bitsPerSample / 8);
      return { ...fmt, dataBytes: size, durationSeconds: size / bytesPerSecond };
    }
    off += 8 + size + (size % 2);
  }
  throw new Error("no data chunk");
}
