// Node.js `cluster` IPC baseline (serialization 'json', Node's default).
// Usage: node benchmarks/node_baseline.js CASE '{"n": ...}'
// Prints one line `RESULT {json}` like benchmarks/cases.py. Every worker it forks is
// killed (SIGKILL, by pid) before it exits, and a watchdog ends it after 120 s.
'use strict';
const cluster = require('cluster');

const PAYLOAD = 'x'.repeat(40);
const message = (i) => ({ type: 'task', id: i, method: 'echo', payload: PAYLOAD });
const YIELD_EVERY = 256;
const WINDOW = 64;

if (cluster.isPrimary) {
  const [name, raw] = process.argv.slice(2);
  const params = raw ? JSON.parse(raw) : {};
  const workers = new Set();
  const now = () => Number(process.hrtime.bigint()) / 1e6; // ms
  const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  };
  const killAll = () => {
    for (const w of workers) {
      try { process.kill(w.process.pid, 'SIGKILL'); } catch (e) { /* gone */ }
    }
  };
  const finish = (result) => {
    killAll();
    process.stdout.write('RESULT ' + JSON.stringify(result) + '\n', () => process.exit(0));
  };
  const watchdog = setTimeout(() => { killAll(); process.exit(3); }, 120000);
  watchdog.unref();
  process.on('exit', killAll);
  process.on('uncaughtException', (e) => { console.error(e); killAll(); process.exit(1); });

  // fork a worker with a role; resolves when it says ready
  const start = (role) => new Promise((resolve) => {
    const w = cluster.fork({ BENCH_ROLE: role });
    workers.add(w);
    w.on('exit', () => workers.delete(w));
    const onReady = (m) => {
      if (m === 'ready') { w.off('message', onReady); resolve(w); }
    };
    w.on('message', onReady);
  });

  const cases = {
    async rtt({ n }) {
      const w = await start('echo');
      const warm = Math.max(Math.floor(n / 10), 10);
      let i = 0;
      let t0 = 0;
      await new Promise((resolve) => {
        w.on('message', () => {
          i++;
          if (i === warm) t0 = now();
          if (i === warm + n) return resolve();
          w.send(message(i));
        });
        w.send(message(0));
      });
      return { value: (now() - t0) / n * 1e3, unit: 'us', n };
    },
    async stream_p2w({ n }) {
      const w = await start('count');
      const done = new Promise((resolve) => w.on('message', resolve));
      w.send({ type: 'expect', n });
      const t0 = now();
      let i = 0;
      await new Promise((resolve) => {
        const pump = () => {
          const end = Math.min(n, i + YIELD_EVERY);
          for (; i < end; i++) w.send(message(i));
          if (i < n) setImmediate(pump); else resolve();
        };
        pump();
      });
      await done;
      return { value: n / ((now() - t0) / 1e3), unit: 'msg/s', n };
    },
    async stream_w2p({ n }) {
      const w = await start('produce');
      let count = 0;
      const t0 = now();
      await new Promise((resolve) => {
        w.on('message', () => { if (++count === n) resolve(); });
        w.send({ type: 'produce', n });
      });
      return { value: n / ((now() - t0) / 1e3), unit: 'msg/s', n };
    },
    async pipeline({ n }) {
      const ws = [await start('echo'), await start('echo')];
      let sent = 0;
      let completed = 0;
      const t0 = now();
      await new Promise((resolve) => {
        for (const w of ws) {
          w.on('message', () => {
            completed++;
            if (sent < n) { w.send(message(sent)); sent++; } else if (completed === n) resolve();
          });
        }
        for (; sent < WINDOW; sent++) ws[sent % 2].send(message(sent));
      });
      return { value: n / ((now() - t0) / 1e3), unit: 'req/s', n, window: WINDOW };
    },
    async startup({ k }) {
      const times = [];
      for (let j = 0; j < k; j++) {
        const t0 = now();
        const w = await start('echo');
        times.push(now() - t0);
        await new Promise((resolve) => { w.on('exit', resolve); w.kill('SIGKILL'); });
      }
      return { value: median(times), unit: 'ms', k, all_ms: times };
    },
    async crash({ k }) {
      const times = [];
      let w = await start('echo');
      for (let j = 0; j < k; j++) {
        const t0 = now();
        // like a supervisor: on 'exit', fork the replacement; time until it is ready
        w = await new Promise((resolve) => {
          w.on('exit', () => { start('echo').then(resolve); });
          process.kill(w.process.pid, 'SIGKILL');
        });
        times.push(now() - t0);
      }
      return { value: median(times), unit: 'ms', k, all_ms: times };
    },
  };
  if (!cases[name]) { console.error('unknown case ' + name); process.exit(2); }
  cases[name](params).then(finish, (e) => { console.error(e); killAll(); process.exit(1); });
} else {
  const role = process.env.BENCH_ROLE;
  if (role === 'echo') {
    process.on('message', (m) => process.send(m));
  } else if (role === 'count') {
    let expected = -1;
    let count = 0;
    process.on('message', (m) => {
      if (m.type === 'expect') { expected = m.n; count = 0; return; }
      if (m.type === 'task' && ++count === expected) process.send({ type: 'done', count });
    });
  } else if (role === 'produce') {
    process.on('message', (m) => {
      if (m.type !== 'produce') return;
      let i = 0;
      const pump = () => {
        const end = Math.min(m.n, i + YIELD_EVERY);
        for (; i < end; i++) process.send(message(i));
        if (i < m.n) setImmediate(pump);
      };
      pump();
    });
  }
  process.on('disconnect', () => process.exit(0));
  process.send('ready');
}
