"""Data & model — extract features of a dataset with a backbone, or bring your own embeddings."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from bilaf_core.errors import BilafError
from pages import _common as common
from pages import _uploads as upload_errors

DEFAULT_DATASET = "fashion-mnist"
DEFAULT_BACKBONE = "efficientnet-lite0"
DEFAULT_LIMIT = 10_000

st.title("Data & model")
st.caption(
    "Every image of the pool becomes one feature vector from a pretrained backbone. Features are cached: "
    "extracting the same dataset with the same backbone again returns at once."
)

tab_extract, tab_upload = st.tabs(["Extract features", "Bring your own embeddings"])

# ------------------------------------------------------------------ extraction
with tab_extract:
    datasets = common.dataset_names()
    backbones = common.backbone_names()
    c1, c2 = st.columns(2)
    with c1:
        dataset = st.selectbox(
            "Dataset", datasets, index=datasets.index(DEFAULT_DATASET) if DEFAULT_DATASET in datasets else 0,
            key="data_dataset", format_func=common.dataset_title,
            help="Fashion-MNIST ships with the machine (Debian package) and works offline.",
        )
        st.caption(common.dataset_summary(dataset))
        root = None
        if common.dataset_needs_root(dataset):
            root = st.text_input("Image folder", key="data_root", placeholder="/path/to/images",
                                 help="A folder of images (class sub-folders give labels; a flat folder has none).") or None
    with c2:
        backbone = st.selectbox(
            "Backbone", backbones, index=backbones.index(DEFAULT_BACKBONE) if DEFAULT_BACKBONE in backbones else 0,
            key="data_backbone", format_func=common.backbone_title,
            help="EfficientNet-Lite0 (ImageNet weights) is bundled and works offline; the paper's DINO ViT-S/16 needs a download or a local checkpoint.",
        )
        st.caption(common.backbone_summary(backbone))
        weights = None
        if not common.backbone_bundled(backbone):
            weights = st.text_input(
                "Weights checkpoint (optional)", key="data_weights", placeholder="/path/to/checkpoint.pth",
                help="This backbone's weights are not bundled: give a local checkpoint, or the extraction fails with a message saying so (no network here).",
            ) or None

    split_size = common.split_size(dataset)
    size_label = f"{split_size:,}" if split_size else "all"
    choices = [f"first {DEFAULT_LIMIT:,} images (a first look: BiLAF is drawn as soon as the features are extracted)", f"the whole split ({size_label} images)", "custom"]
    pool_choice = st.radio("Pool size", choices, key="data_pool_choice", horizontal=True,
                           help="A limit keeps the first N images of the split (stable order).")
    if pool_choice == choices[0]:
        limit = DEFAULT_LIMIT
    elif pool_choice == choices[1]:
        limit = None
    else:
        limit = int(st.number_input("images", 10, split_size or 10_000_000, min(DEFAULT_LIMIT, split_size or DEFAULT_LIMIT), step=1000, key="data_limit"))
    if split_size and limit and limit >= split_size:
        limit = None
    follow = st.checkbox(
        "then run BiLAF (1% budget) and draw the map", value=True, key="data_follow",
        help="Starts the selection and the 2-D map as soon as the features are ready, so the Map page has something to show.",
    )
    if st.button("Extract features", type="primary", key="data_extract", disabled=common.dataset_needs_root(dataset) and not root):
        try:
            job_id = common.submit_extraction(dataset, backbone, limit=limit, root=root, weights=weights, follow_up=follow)
            st.session_state["data_job"] = job_id
            st.rerun()
        except BilafError as exc:
            st.error(str(exc))

    for record in common.job_manager().list(kind="extract", limit=3):
        if record["status"] in ("queued", "running") or record["id"] == st.session_state.get("data_job"):
            common.show_job(record["id"], key="data", on_done=common.extraction_done)

    # -------------------------------------------------------------- pretraining on this pool
    # Self-contained block: uses only common.job_manager(), common.show_job() and common.workspace().
    from bilaf_core import jobs as jobs_mod
    from bilaf_core.pretrain import available_methods

    pretrain_records = common.job_manager().list(kind="pretrain", limit=3)
    pretrain_running = any(r["status"] in jobs_mod.ACTIVE for r in pretrain_records)
    with st.expander("Pretrain on this pool (self-supervised, no labels)", expanded=pretrain_running):
        st.caption(
            "Train a backbone on the images of the pool chosen above — never their labels — so the features fit "
            "your domain. The result appears under **Backbone** as `pool:NAME`. A cancelled run resumes from its "
            "last finished epoch when started again with the same settings; see docs/pretrain.md for what to expect."
        )
        q1, q2, q3, q4 = st.columns(4)
        pt_arch = q1.selectbox("Architecture", ["small-cnn", "tiny-cnn", "efficientnet-lite0"], key="pt_arch",
                               help="small/tiny CNN: made for 28-64 px images, train on CPU. EfficientNet-Lite0: "
                                    "continues from its ImageNet weights (slow on CPU).")
        pt_method = q2.selectbox("Method", available_methods(), key="pt_method",
                                 help="SimCLR (contrastive), BYOL or VICReg (non-contrastive).")
        pt_epochs = int(q3.number_input("Epochs", 1, 1000, 10, key="pt_epochs"))
        pt_size = int(q4.number_input("Image size (0 = the images' own)", 0, 1024, 0, key="pt_size",
                                      help="Training and extraction input side in pixels."))
        pt_default_name = f"{dataset}-{pt_arch}-{pt_method}"
        pt_name = st.text_input("Name", key="pt_name", placeholder=pt_default_name,
                                help="Folder under <workspace>/backbones; extract with pool:NAME.").strip() or pt_default_name
        if st.button("Pretrain", key="pt_start", disabled=common.dataset_needs_root(dataset) and not root):
            try:
                st.session_state["pt_job"] = jobs_mod.submit_pretrain(
                    common.job_manager(), dataset=dataset, root=root, limit=limit, arch=pt_arch, method=pt_method,
                    epochs=pt_epochs, image_size=pt_size or None,
                    init="imagenet" if pt_arch == "efficientnet-lite0" else "random",
                    out_dir=Path(common.workspace().root) / "backbones" / pt_name.replace("/", "-"))
                st.rerun()
            except BilafError as exc:
                st.error(str(exc))

        def _pretrain_done(record: dict) -> None:
            result = record.get("result") or {}
            st.success(f"{record.get('title')}: done (final loss {result.get('final_loss') or 0:.4f}). Choose "
                       f"**{result.get('backbone')}** as Backbone above and press **Extract features**.")

        for record in pretrain_records:
            if record["status"] in jobs_mod.ACTIVE or record["id"] == st.session_state.get("pt_job"):
                common.show_job(record["id"], key="pretrain", on_done=_pretrain_done)

# ------------------------------------------------------------------ bring your own embeddings
with tab_upload:
    st.markdown(
        "Upload an **N × D `.npy`** of features (one row per image). Optionally add the **ids** (a text file with one "
        "id or file path per line, N lines) and the **labels** (integers, `.npy` or one per line — used only for "
        "colouring the map and evaluating, never for selecting)."
    )
    u1, u2, u3 = st.columns(3)
    # .txt / .csv are accepted here so that the page can say what to do with them (a plain
    # "npy only" filter just greyed the file out and Import stayed disabled without a word)
    npy = u1.file_uploader("features (.npy)", type=["npy", "txt", "csv"], key="data_up_npy")
    ids_file = u2.file_uploader("ids (optional)", type=["txt", "csv", "json"], key="data_up_ids")
    labels_file = u3.file_uploader("labels (optional)", type=["npy", "txt", "csv", "json"], key="data_up_labels")
    features_problem = upload_errors.features_file_problem(npy.name) if npy is not None else None
    if features_problem:
        st.error(features_problem)
    name = st.text_input("Name", value=(Path(npy.name).stem if npy else ""), key="data_up_name", placeholder="my-embeddings")
    if st.button("Import", disabled=npy is None or features_problem is not None, key="data_import"):
        with tempfile.TemporaryDirectory() as tmp:
            # each file under its own name (in its own folder), so an error can name the user's file
            paths, names = upload_errors.stage_uploads(Path(tmp), {"npy": npy, "ids": ids_file, "labels": labels_file})
            try:
                fs_id = common.import_embeddings(paths["npy"], paths.get("ids"), paths.get("labels"), name=name or "embeddings")
                st.session_state["feature_set_id"] = fs_id
                st.success("Imported. Run a selection on the **Select** page; the map is being drawn meanwhile.")
            except BilafError as exc:
                st.error(upload_errors.user_message(str(exc), names))

# ------------------------------------------------------------------ cached feature sets
st.subheader("Feature sets in this workspace")
sets = common.feature_sets()
if not sets:
    st.info("None yet. Press **Extract features** above (Fashion-MNIST + EfficientNet-Lite0 work offline), or import embeddings.")
else:
    st.dataframe(
        [
            {
                "feature set": s["label"],
                "dataset": s["dataset"],
                "backbone": s["backbone"],
                "images": s["n"],
                "dims": s["dim"],
                "size": common.fmt_size(common.feature_set_bytes(s)),
                "time taken": common.fmt_duration(s["timings"].get("total")),
                "created": common.fmt_time(s["created"]),
                "map": "ready" if common.load_map(s["path"]) is not None else "—",
            }
            for s in sets
        ],
        hide_index=True,
        width="stretch",
    )
    st.page_link("pages/select.py", label="Next: choose what to label", icon=":material/checklist:")
