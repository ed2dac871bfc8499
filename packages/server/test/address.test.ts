import assert from "node:assert/strict";
import { test } from "node:test";
import { classifyAddress, isLiteralIp } from "../src/delivery/address.js";

// Unit tests of the SSRF classifier: every range is checked here by classification only; no
// connection is ever made to any of these addresses.
const cases: Array<[string, string]> = [
  ["127.0.0.1", "loopback"],
  ["127.255.255.254", "loopback"],
  ["::1", "loopback"],
  ["[::1]", "loopback"],
  ["::ffff:127.0.0.1", "loopback"],
  ["::ffff:7f00:1", "loopback"],
  ["10.0.0.1", "private"],
  ["172.16.5.4", "private"],
  ["172.31.255.255", "private"],
  ["172.32.0.1", "global"],
  ["192.168.1.1", "private"],
  ["100.64.0.1", "private"],
  ["169.254.169.254", "metadata"],
  ["169.254.10.10", "link-local"],
  ["0.0.0.0", "unspecified"],
  ["::", "unspecified"],
  ["224.0.0.1", "multicast"],
  ["239.255.255.250", "multicast"],
  ["255.255.255.255", "reserved"],
  ["192.0.2.10", "reserved"],
  ["198.18.0.1", "reserved"],
  ["8.8.8.8", "global"],
  ["1.1.1.1", "global"],
  ["fc00::1", "private"],
  ["fd12:3456::1", "private"],
  ["fe80::1", "link-local"],
  ["ff02::1", "multicast"],
  ["2001:db8::1", "reserved"],
  ["3fff::1", "reserved"],
  ["3fff:fff:ffff::1", "reserved"],
  ["3fff:1000::1", "global"],
  ["64:ff9b::a00:1", "private"],
  ["64:ff9b::808:808", "global"],
  ["2002:c0a8:0101::1", "private"],
  ["2606:4700:4700::1111", "global"],
  ["::ffff:10.1.2.3", "private"],
  ["::ffff:169.254.169.254", "metadata"],
  ["not-an-ip", "invalid"],
  ["999.1.1.1", "invalid"],
];

test("classifyAddress puts every special-purpose range outside 'global'", () => {
  for (const [addr, want] of cases) assert.equal(classifyAddress(addr), want, addr);
});

test("isLiteralIp recognises the forms a URL's hostname takes after WHATWG normalisation", () => {
  // new URL("https://127.1/").hostname is "127.0.0.1"; new URL("https://[::ffff:127.0.0.1]/").hostname is "[::ffff:7f00:1]".
  assert.equal(new URL("https://127.1/").hostname, "127.0.0.1");
  assert.equal(isLiteralIp(new URL("https://127.1/").hostname), true);
  assert.equal(isLiteralIp(new URL("https://[::ffff:127.0.0.1]/").hostname), true);
  assert.equal(classifyAddress(new URL("https://[::ffff:127.0.0.1]/").hostname), "loopback");
  assert.equal(classifyAddress(new URL("https://0x7f.1/").hostname), "loopback");
  assert.equal(isLiteralIp("example.com"), false);
  assert.equal(isLiteralIp("localhost"), false);
});
