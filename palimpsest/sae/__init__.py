"""SAEs for unlearning audits: sae-lens training, SAUCE concept features (and clamping), RA-SAE blindspots.

Importing this package registers two analysers: `sae_features` (SAUCE concept-feature residue) and `blindspots`
(RA-SAE conceptual blindspots).

Public functions:
- `get_or_train_sae(model, site, corpus, config, cache_dir=None) -> (sae_lens.SAE, quality dict)`: train a sae-lens
  SAE (TopK by default; `SAEConfig.architecture` picks another) on `model`'s activations at `site` over `corpus`
  (a list of texts), cached in sae-lens's format under `<cache>/sae/<key>/` by (model weight hash, site, corpus,
  training config). quality: explained_variance, l0, dead_fraction, ce_loss_clean / ce_loss_spliced /
  ce_loss_mean_ablated, loss_recovered.
- `concept_features(sae, model, site, concept, config) -> ConceptFeatures`: the features firing selectively on the
  concept's forget prompts vs its neighbour and retain prompts (indices, selectivity, mean activation on
  forget/neighbour/retain prompts, firing share, top-activating tokens).
- `sauce_unlearn(model, concept, config=None) -> LoadedModel`: SAUCE as an unlearning method: an SAE and its concept
  features at each of `config.sauce_sites` (blocks.0 and blocks.1 by default), clamped at `config.clamp_value`
  (-20 x activation by default) by hooks on a copy of `model`.
- `sauce_clamp(model, sae, site, features, clamp_value=SAEConfig().clamp_value, share_weights=False) -> LoadedModel`:
  one SAUCE clamp; a deep copy of `model` (or, with share_weights, new modules sharing its tensors) whose persistent hook at `site`
  sets each firing concept feature to clamp_value x its activation and adds the decoded change to the stream
  (the SAE's reconstruction error is preserved); weights untouched, so it is suppression by construction.
- `train_sae(batches, d_in, config, checkpoint_dir=...)`: sae-lens's SAETrainer on any batch iterator
  (`tensor_batches` in memory, `shard_batches` streamed from `capture_to_disk` shards), resumable.
- `train_ra_sae`, `generate_texts`, `overcomplete_sae`: the RA-SAE blindspot pieces.
"""

from palimpsest.sae import analyser, blindspots  # noqa: F401  (registers sae_features and blindspots)
from palimpsest.sae.blindspots import generate_texts, overcomplete_sae, train_ra_sae
from palimpsest.sae.config import ARCHITECTURES, SAEConfig
from palimpsest.sae.data import concept_corpus, corpus_activations, shard_batches, site_inputs, tensor_batches
from palimpsest.sae.features import ConceptFeatures, concept_features, encode_prompts
from palimpsest.sae.quality import sae_quality
from palimpsest.sae.sauce import sauce_clamp, sauce_unlearn
from palimpsest.sae.train import SAEError, get_or_train_sae, load_sae, model_hash, train_sae

__all__ = ["ARCHITECTURES", "ConceptFeatures", "SAEConfig", "SAEError", "concept_corpus", "concept_features",
           "corpus_activations", "encode_prompts", "generate_texts", "get_or_train_sae", "load_sae", "model_hash",
           "overcomplete_sae", "sae_quality", "sauce_clamp", "sauce_unlearn", "shard_batches", "site_inputs", "tensor_batches",
           "train_ra_sae", "train_sae"]
