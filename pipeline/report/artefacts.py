"""The report's artefacts, as data, in the papers' order: which experiment and results folder,
which table to show (our numbers), which published entries to put beside it (``conf/paper/``,
each tagged verified or recalled), the verdict rule (:mod:`pipeline.report.rules`), the command
that regenerates it and the hardware it needs. Every experiment of ``conf/experiment/`` must
appear (a test checks); one without a rule is "not judged", said so, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Artefact:
    experiment: str                      # conf/experiment/<name>.yaml
    paper: str                           # A | B | C | beyond
    title: str
    table: str | None = None             # the CSV shown (our numbers)
    columns: tuple[str, ...] = ()        # () = every non-provenance column
    rule: str = "no_rule_yet"
    published: tuple[tuple[str, str], ...] = ()   # (paper file, entry key) shown for every paper model
    command: str = ""
    hardware: str = "2-core CPU"
    folder: str | None = None            # results folder when it is not the experiment's own
    also_needs: tuple[str, ...] = field(default_factory=tuple)   # more tables the rule reads


MA, SW = "massive_activations", "super_weight"
ARTEFACTS: tuple[Artefact, ...] = (
    Artefact("massive_activations_default", "A", "§2 profile: layer-wise top-k, Fig. 1 / Fig. 3 / Table 1 on the embedded model",
             "ma_massive", ("model", "dim", "token_type", "first_layer_1based", "n_layers", "steady", "value_mean"),
             "massive_found", ((MA, "massive_dims"), (MA, "first_layer_1based"), (MA, "table1_top")), "make run"),
    Artefact("massive_activations_fig1", "A", "Fig. 1: LLaMA2-7B layer 2 landscape", "ma_massive", rule="massive_found",
             published=((MA, "massive_dims"),), command="make repro EXP=massive_activations_fig1", hardware="1 GPU (>= 24 GB)"),
    Artefact("massive_activations_fig3", "A", "Fig. 3: layer-wise top-1/2/3 and median (paper models)", "ma_massive",
             rule="massive_found", published=((MA, "table1_top"),),
             command="make sweep EXP=massive_activations_fig3 ARGS='model=llama2_7b,llama2_13b,phi2'", hardware="1 GPU per model"),
    Artefact("massive_activations_tab1", "A", "Table 1: top-k and median (paper models)", "ma_massive", rule="massive_found",
             published=((MA, "table1_top"), (MA, "table1_median")),
             command="make sweep EXP=massive_activations_tab1 ARGS='model=llama2_7b,llama2_13b,mixtral_8x7b'", hardware="GPUs"),
    Artefact("massive_activations_tab_intervene", "A", "Table 3: set to zero / set to mean", "ma_intervene_table",
             rule="set_zero_breaks_set_mean_keeps", published=((MA, "intervention_ppl"), (MA, "intervention_acc_mean")),
             command="make repro EXP=massive_activations_tab_intervene", hardware="2-core CPU, ~14 min"),
    Artefact("massive_activations_fig_attention", "A", "§4.1 attention concentrates on massive-activation tokens",
             "ma_attention_share", ("model", "layer_1based", "share_massive", "share_control", "share_uniform"),
             "attention_on_massive", command="make repro EXP=massive_activations_fig_attention"),
    Artefact("massive_activations_fig_decomposition", "A", "§4.2 attention output decomposition (implicit bias)",
             "ma_attention_decomposition", command="make repro EXP=massive_activations_fig_decomposition"),
    *(Artefact(f"massive_activations_gpt2_{v}", "A", f"§4.3 GPT-2 from scratch: variant {v} (the three side by side)",
               "train_curve", ("model", "step", "val_loss", "ratio_max", "top1_max", "attn_share_first",
                               "attn_share_sink", "attn_share_kprime"), "gpt2_variants",
               command=f"make train EXP=massive_activations_gpt2_{v} (tier=paper: 8 GPUs per variant)",
               hardware="2-core CPU, ~3.5 min (offline tier); paper tier: 8 GPUs for days", folder="massive_activations_gpt2")
      for v in ("default", "sink", "attn_bias")),
    Artefact("massive_activations_vit_profile", "A", "§5 ViTs: massive activations and registers (Figs. 10-11)",
             "vit_layer_stats", ("model", "layer_1based", "top1", "median", "top1_over_median", "top1_dim", "top1_token_type"),
             rule="vit_massive", published=((MA, "massive_dims"), (MA, "register_mean_max")),
             command="make repro EXP=massive_activations_vit_profile (paper: ARGS='model=dinov2_reg_g data=imagenet_val')",
             hardware="2-core CPU, ~20 s; ViT-G: 1 GPU", also_needs=("vit_massive",)),
    Artefact("massive_activations_vit_intervene", "A", "§5 ViTs: set to zero / mean, Fix-Reg-Mean (proxy accuracy)",
             "vit_intervene", ("model", "condition", "metric", "value", "why"), "vit_interventions",
             ((MA, "fix_reg_mean_acc"),), "make repro EXP=massive_activations_vit_intervene",
             "2-core CPU, ~4 min; ImageNet: 1 GPU"),
    Artefact("super_weight_tab2", "B", "Table 2: super-weight directory", "sw_directory",
             ("model", "layer", "row", "col", "weight", "role", "row_is_massive_dim"), "super_weight_creates_massive",
             (("super_weight", "super_weights"),), "make repro EXP=super_weight_tab2"),
    Artefact("super_weight_fig3", "B", "Fig. 3: down-projection input / output maxima per layer", "sw_down_proj_max",
             command="make repro EXP=super_weight_tab2 (the same run)", folder="super_weight_tab2"),
    Artefact("super_weight_tab1", "B", "Table 1: prune SW / restore SA / prune non-SW", "sw_ablate_table", rule="prune_sw_destroys",
             published=(("super_weight", "table1"),), command="make repro EXP=super_weight_tab1", hardware="2-core CPU, ~37 min"),
    Artefact("super_weight_fig4", "B", "Fig. 4: max layer output under ablations", "sw_layer_max",
             command="make repro EXP=super_weight_fig4"),
    Artefact("super_weight_fig5", "B", "Fig. 5: stopword shift when the super weight is removed", "sw_case_study",
             command="make repro EXP=super_weight_fig5"),
    Artefact("super_weight_fig6", "B", "Fig. 6: scaling the super weight", "sw_scale_table", rule="scaling_curve",
             command="make repro EXP=super_weight_fig6", hardware="2-core CPU, ~7 min"),
    Artefact("super_weight_fig7", "B", "Fig. 7: INT4 block sizes, RTN vs clip + restore", "sw_weightquant_table",
             rule="clip_restore_helps", published=(("super_weight", "fig7"),), command="make repro EXP=super_weight_fig7",
             hardware="2-core CPU, ~30 min"),
    Artefact("super_weight_tab6", "B", "Table 6: RTN with the super weights amplified", "sw_weightquant_table",
             command="make repro EXP=super_weight_tab6", hardware="2-core CPU, ~17 min"),
    Artefact("super_weight_tab3", "B", "Tables 3/4/7: W8A8, naive / super-activation aware / SmoothQuant", "sw_actquant_table",
             published=(("super_weight", "w8a8"),), command="make repro EXP=super_weight_tab3", hardware="2-core CPU, ~5 min"),
    Artefact("birth_readme", "C", "the official README setting: induction head and memory probes (Fig. 3)", "birth_curve",
             ("label", "step", "acc_end", "acc_end_test", "wo1", "wk1", "wk0", "wk0_64", "loss_head", "loss_bigram"),
             "induction_head_forms", command="make repro EXP=birth_readme", hardware="2-core CPU, ~30 min"),
    Artefact("birth_fig2", "C", "Fig. 2: attention maps of the full model, fixed vs random triggers", "birth_curve",
             ("label", "step", "acc_end", "score_acc", "score2_acc", "loss_head", "loss_bigram"), "attention_heads_form",
             command="make sweep EXP=birth_fig2 ARGS='birth_variant=fixed,random_triggers'"),
    Artefact("birth_fig3", "C", "Fig. 3: freezing one matrix until step 300 (top-down order)", "birth_curve",
             ("label", "step", "acc_end", "wo1", "wk1", "wk0"), "freezing_order",
             command="make sweep EXP=birth_fig3 ARGS='birth_variant=none,wo2_frozen,wk2_frozen,wk1_frozen'"),
    Artefact("birth_fig4", "C", "Fig. 4: global vs in-context learning, data effects", "birth_curve",
             ("label", "step", "loss_bigram", "loss_head", "ff1_loss", "acc_end", "acc_end_test"), "global_before_in_context",
             command="make sweep EXP=birth_fig4 ARGS='birth_variant=fixed,k1,k3,random_triggers,bigram_outputs,ood'"),
    Artefact("atlas", "beyond", "any-model atlas: massive activations and super weights, one row per model", "atlas",
             ("model", "model_type", "layers", "params_m", "massive", "massive_layer", "massive_dim", "massive_token",
              "massive_value", "massive_ratio", "peak_ratio", "super_weight", "sw_layer", "sw_row", "sw_col", "sw_weight",
              "sw_row_is_massive_dim"), "measured_only", command="make atlas MODELS=<models>",
             hardware="2-core CPU for the offline models, minutes each; Hub models: 1 GPU each"),
    Artefact("birth_sink", "beyond", "a start token as an attention sink on the bigram task, with / without k'/v'",
             "birth_curve", ("label", "step", "L0_start_share", "L1_start_share", "L1_start_norm_ratio", "L1_kprime_share",
                             "ratio_max", "acc_end"), "measured_only",
             command="make sweep EXP=birth_sink ARGS='birth_variant=bos,bos_kv'"),
)
