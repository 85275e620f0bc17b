// eval_bench: runs `recstream eval` (eval::RunEval) over one JSONL stream for
// several learner configurations and prints one Markdown table row each, with
// the Bayes ceiling and, on request, the baselines. Used to produce EVAL.md.
//
//   eval_bench --events FILE [--baselines] [--single-task]
//              [--mf DIM,LR,L2,INIT] [--oracle EVENTS,USERS,ITEMS,SEED] CONFIG...
//   --oracle adds the oracle bound (eval/oracle.h) of the stream that
//   `recstream gen` writes with those options (FILE must be that stream).
//   CONFIG = name[:key=value,key=value,...]   keys: the LearnerOptions fields
//   (dim, hidden, experts, arch, weighting, lr_embedding, lr_dense, lr_bias,
//   lr_weighting, l2, init_scale, grad_clip, embedding_optimizer,
//   dense_optimizer, adam_beta1, adam_beta2, weight_decay, rating_loss,
//   huber_delta, esmm, negatives, negative_window, history, implicit_negatives,
//   feedback, threads, chunk, seed,
//   fixed_click, fixed_purchase, fixed_rating).
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "eval/evaluator.h"
#include "eval/oracle.h"

namespace {

using recstream::eval::EvalOptions;
using recstream::eval::EvalReport;
using recstream::eval::TaskReport;
using namespace recstream::learner;

bool SetKey(LearnerOptions* o, const std::string& key, const std::string& v) {
  auto f = [&] { return std::strtof(v.c_str(), nullptr); };
  auto i = [&] { return std::atoi(v.c_str()); };
  auto opt = [&](Optimizer* out) {
    for (Optimizer x : {Optimizer::kAdagrad, Optimizer::kAdam, Optimizer::kAdamW, Optimizer::kSgd})
      if (OptimizerName(x) == v) return *out = x, true;
    return false;
  };
  if (key == "dim") return o->dim = i(), true;
  if (key == "hidden") return o->hidden = i(), true;
  if (key == "experts") return o->experts = i(), true;
  if (key == "arch") return o->arch = v == "mmoe" ? Arch::kMmoe : Arch::kSharedBottom, true;
  if (key == "weighting") {
    for (Weighting w :
         {Weighting::kFixed, Weighting::kUncertainty, Weighting::kGradNorm, Weighting::kDwa})
      if (WeightingName(w) == v) return o->weighting = w, true;
    return false;
  }
  if (key == "lr_embedding") return o->lr_embedding = f(), true;
  if (key == "lr_dense") return o->lr_dense = f(), true;
  if (key == "lr_bias") return o->lr_bias = f(), true;
  if (key == "lr_weighting") return o->lr_weighting = f(), true;
  if (key == "l2") return o->l2 = f(), true;
  if (key == "init_scale") return o->init_scale = f(), true;
  if (key == "grad_clip") return o->grad_clip = f(), true;
  if (key == "embedding_optimizer") return opt(&o->embedding_optimizer);
  if (key == "dense_optimizer") return opt(&o->dense_optimizer);
  if (key == "adagrad_init") return o->adagrad_init = f(), true;
  if (key == "adam_beta1") return o->adam_beta1 = f(), true;
  if (key == "adam_beta2") return o->adam_beta2 = f(), true;
  if (key == "weight_decay") return o->weight_decay = f(), true;
  if (key == "rating_loss")
    return o->rating_loss = v == "huber" ? RatingLoss::kHuber : RatingLoss::kSquared, true;
  if (key == "huber_delta") return o->huber_delta = f(), true;
  if (key == "esmm") return o->esmm = v == "true" || v == "1", true;
  if (key == "negatives") return o->negatives = i(), true;
  if (key == "history") return o->history = i(), true;
  if (key == "implicit_negatives") return o->implicit_negatives = i(), true;
  if (key == "feedback")
    return o->feedback = v == "explicit"   ? Feedback::kExplicit
                         : v == "implicit" ? Feedback::kImplicit
                                           : Feedback::kAuto,
           true;
  if (key == "negative_window") return o->negative_window = i(), true;
  if (key == "replay") return o->replay = i(), true;
  if (key == "replay_window") return o->replay_window = i(), true;
  if (key == "threads") return o->threads = i(), true;
  if (key == "chunk") return o->chunk = i(), true;
  if (key == "seed") return o->seed = uint64_t(std::atoll(v.c_str())), true;
  if (key == "fixed_click") return o->fixed_weights[0] = f(), true;
  if (key == "fixed_purchase") return o->fixed_weights[1] = f(), true;
  if (key == "fixed_rating") return o->fixed_weights[2] = f(), true;
  return false;
}

std::string F(double v) { return fmt::format("{:.4f}", v); }

void Row(const std::string& name, const std::array<TaskReport, kNumTasks>& t, double eps) {
  fmt::print("| {} | {} | {} | {} | {} | {} | {} | {} |\n", name, F(t[0].auc), F(t[0].last10_auc),
             F(t[1].auc), F(t[1].last10_auc), F(t[2].mae), F(t[2].last10_mae),
             eps > 0 ? fmt::format("{:.0f}", eps) : std::string("-"));
}

}  // namespace

int main(int argc, char** argv) {
  std::string events;
  bool baselines = false, single_task = false;
  recstream::eval::BiasedMfOptions mf;
  std::vector<std::string> configs;
  bool oracle = false;
  recstream::eval::GeneratorOptions oracle_gen;
  for (int a = 1; a < argc; ++a) {
    std::string arg = argv[a];
    if (arg == "--events" && a + 1 < argc) {
      events = argv[++a];
    } else if (arg == "--baselines") {
      baselines = true;
    } else if (arg == "--mf" && a + 1 < argc) {
      // dim,lr,l2,init_scale
      std::sscanf(argv[++a], "%d,%f,%f,%f", &mf.dim, &mf.lr, &mf.l2, &mf.init_scale);
    } else if (arg == "--oracle" && a + 1 < argc) {
      unsigned long long n = 0;
      unsigned long long seed = 1;
      oracle = std::sscanf(argv[++a], "%llu,%d,%d,%llu", &n, &oracle_gen.users, &oracle_gen.items,
                           &seed) == 4;
      oracle_gen.events = n;
      oracle_gen.seed = seed;
      if (!oracle) {
        fmt::print(stderr, "--oracle wants EVENTS,USERS,ITEMS,SEED\n");
        return 2;
      }
    } else if (arg == "--single-task") {
      single_task = true;
    } else {
      configs.push_back(arg);
    }
  }
  if (events.empty() || configs.empty()) {
    fmt::print(stderr,
               "usage: eval_bench --events FILE [--baselines] [--single-task] "
               "name[:key=value,...]...\n");
    return 2;
  }
  fmt::print(
      "| model | click AUC | click AUC last10 | purchase AUC | purchase AUC last10 | "
      "rating MAE | rating MAE last10 | events/s |\n");
  fmt::print("|---|---|---|---|---|---|---|---|\n");
  bool first = true;
  for (const std::string& config : configs) {
    EvalOptions options;
    options.progress = false;
    options.baselines = baselines && first;
    options.single_task_baseline = single_task;
    options.biased_mf = mf;
    std::string name = config.substr(0, config.find(':'));
    if (config.find(':') != std::string::npos) {
      std::string rest = config.substr(config.find(':') + 1);
      size_t at = 0;
      while (at <= rest.size()) {
        size_t end = rest.find(',', at);
        if (end == std::string::npos) end = rest.size();
        std::string kv = rest.substr(at, end - at);
        at = end + 1;
        if (kv.empty()) continue;
        size_t eq = kv.find('=');
        if (eq == std::string::npos ||
            !SetKey(&options.learner, kv.substr(0, eq), kv.substr(eq + 1))) {
          fmt::print(stderr, "bad setting '{}'\n", kv);
          return 2;
        }
      }
    }
    std::ifstream in(events, std::ios::binary);
    if (!in) {
      fmt::print(stderr, "cannot read {}\n", events);
      return 1;
    }
    EvalReport report;
    recstream::Status s = recstream::eval::RunEval(options, in, &report);
    if (!s.ok()) {
      fmt::print(stderr, "{}: {}\n", name, s.ToString());
      return 1;
    }
    if (first) {
      std::array<TaskReport, kNumTasks> bayes = report.tasks;
      for (int t = 0; t < kNumTasks; ++t) {
        bayes[t].auc = bayes[t].last10_auc = report.tasks[t].bayes_auc;
        bayes[t].mae = bayes[t].last10_mae = report.tasks[t].bayes_mae;
      }
      Row("Bayes ceiling (truth)", bayes, 0);
      if (oracle) {
        recstream::eval::OracleReport o;
        recstream::Status os = recstream::eval::RunOracle(oracle_gen, &o);
        if (!os.ok()) {
          fmt::print(stderr, "oracle: {}\n", os.ToString());
          return 1;
        }
        std::array<TaskReport, kNumTasks> rows = report.tasks;
        const recstream::eval::OracleTaskBound* b[kNumTasks] = {&o.click, &o.purchase, &o.rating};
        for (int t = 0; t < kNumTasks; ++t) {
          rows[t].auc = b[t]->auc;
          rows[t].last10_auc = b[t]->last10_auc;
          rows[t].mae = b[t]->mae;
          rows[t].last10_mae = b[t]->last10_mae;
        }
        Row("oracle bound (items known, users inferred)", rows, 0);
      }
      for (const auto& b : report.baselines) Row("baseline: " + b.name, b.tasks, 0);
      first = false;
    }
    Row(name, report.tasks, report.events_per_second);
    std::fflush(stdout);
  }
  return 0;
}
