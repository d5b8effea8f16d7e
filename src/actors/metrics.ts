import { Gauge, Histogram, Registry } from "prom-client";
import type { Queryable } from "../store/store.ts";
import type { CommitStats } from "./journal.ts";
import { countActorsByStatus } from "./repository.ts";
import type { ActorSystem } from "./system.ts";

/**
 * The runtime's Prometheus metrics. Counters live as plain numbers on the hot path and are
 * read when scraped; commit latency and batch size are histograms fed by the journal.
 */
export class RuntimeMetrics {
  readonly registry: Registry;
  private readonly commitSeconds: Histogram;
  private readonly batchEvents: Histogram;
  private system: ActorSystem | null = null;

  constructor(registry = new Registry()) {
    this.registry = registry;
    this.commitSeconds = new Histogram({
      name: "tether_journal_commit_seconds",
      help: "Time to commit one journal batch",
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1],
      registers: [registry],
    });
    this.batchEvents = new Histogram({
      name: "tether_journal_batch_events",
      help: "Events per group commit",
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 4000],
      registers: [registry],
    });
  }

  readonly onCommit = (stats: CommitStats): void => {
    this.commitSeconds.observe(stats.ms / 1000);
    if (stats.events > 0) this.batchEvents.observe(stats.events);
  };

  /** Registers the gauges that read `system` (and the store, for passivated actors) when scraped. */
  bind(system: ActorSystem, db: Queryable): void {
    this.system = system;
    const r = [this.registry];
    const self = this;
    new Gauge({
      name: "tether_actors",
      help: "Actors by kind and state: resident (in memory), passivated (stored only), failed",
      labelNames: ["kind", "state"],
      registers: r,
      async collect() {
        this.reset();
        for (const [kind, s] of self.stats().kinds) {
          this.set({ kind, state: "resident" }, s.resident);
          this.set({ kind, state: "failed" }, s.failed);
          this.set({ kind, state: "passivated" }, 0);
        }
        for (const row of await countActorsByStatus(db)) if (row.status === "passive") this.set({ kind: row.kind, state: "passivated" }, row.n);
      },
    });
    const perKind = (name: string, help: string, pick: (s: ReturnType<ActorSystem["stats"]>["kinds"] extends Map<string, infer V> ? V : never) => number) =>
      new Gauge({
        name, help, labelNames: ["kind"], registers: r,
        collect() {
          for (const [kind, s] of self.stats().kinds) this.set({ kind }, pick(s));
        },
      });
    perKind("tether_mailbox_depth", "Events queued or not yet durable, summed over a kind's actors", (s) => s.depth);
    perKind("tether_mailbox_depth_max", "Deepest mailbox of a kind", (s) => s.maxDepth);
    perKind("tether_actor_events_total", "Events accepted and journaled", (s) => s.events);
    perKind("tether_actor_restarts_total", "Supervisor restarts", (s) => s.restarts);
    perKind("tether_effect_errors_total", "Effects whose handler threw", (s) => s.effectErrors);
    new Gauge({ name: "tether_timers", help: "Durable timers armed", registers: r, collect() { this.set(self.stats().timers); } });
    new Gauge({ name: "tether_journal_pending_events", help: "Events accepted but not yet committed (journal lag)", registers: r, collect() { this.set(self.stats().journalPending); } });
  }

  private stats() {
    if (!this.system) throw new Error("metrics not bound to a system");
    return this.system.stats();
  }
}
