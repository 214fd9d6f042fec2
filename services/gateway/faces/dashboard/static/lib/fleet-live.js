// Keeping a page's data fresh: read now, again every few seconds (not while the tab is hidden),
// soon after a feed event of the named families (a burst of events reads once), and at once
// after the feed was away. One read at a time; a read asked for meanwhile runs once after it.

/** One read at a time: calls made while `fn` runs collapse into one more run after it. */
export function single(fn) {
  let running = null;
  let again = false;
  const run = async () => {
    if (running) { again = true; return running; }
    running = (async () => {
      try { await fn(); } finally { running = null; }
      if (again) { again = false; await run(); }
    })();
    return running;
  };
  return run;
}

/**
 * keepFresh({read, every: 5000, feed, types: ["worker.", "pool."], onEvent, debounceMs: 1000})
 * -> stop(). `every` may be a function (the period can change, e.g. with the sampling interval).
 * `onEvent(event)` sees every feed event first (a live counter, for one).
 */
export function keepFresh({ read, every = 5000, feed, types = [], onEvent, debounceMs = 1000 }) {
  let timer = null;
  let soon = null;
  let stopped = false;
  const period = () => (typeof every === "function" ? every() : every);

  const schedule = () => {
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(tick, period());
  };
  async function tick() {
    if (!document.hidden) await read().catch(() => {});
    schedule();
  }
  const onFeed = (e) => {
    const event = e.detail?.event;
    if (!event) return;
    onEvent?.(event);
    if (!types.some((t) => event.type?.startsWith(t))) return;
    clearTimeout(soon);
    soon = setTimeout(() => read().catch(() => {}), debounceMs);
  };
  const onResync = () => { read().catch(() => {}); };
  const onVisible = () => { if (!document.hidden) read().catch(() => {}); };

  feed?.addEventListener("event", onFeed);
  feed?.addEventListener("resync", onResync);
  document.addEventListener("visibilitychange", onVisible);
  read().catch(() => {}).finally(schedule);

  return () => {
    stopped = true;
    clearTimeout(timer);
    clearTimeout(soon);
    feed?.removeEventListener("event", onFeed);
    feed?.removeEventListener("resync", onResync);
    document.removeEventListener("visibilitychange", onVisible);
  };
}
