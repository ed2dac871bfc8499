/**
 * `compute` remembered by key, for values derived from a few distinct inputs again and again (an
 * endpoint's secret key bytes, its parsed headers, its parsed URL). Bounded: past `max` entries the
 * memory starts over, which only costs recomputing.
 */
export function memo<V>(compute: (key: string) => V, max = 10_000): (key: string) => V {
  const cache = new Map<string, V>();
  return (key) => {
    if (cache.has(key)) return cache.get(key) as V;
    if (cache.size >= max) cache.clear();
    const value = compute(key);
    cache.set(key, value);
    return value;
  };
}
