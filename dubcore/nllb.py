"""NLLB-200's languages as BCP-47 tags, and the map from a requested tag to NLLB's code
(data and pure functions: the registry lists these languages without loading the engine,
``engines/translate_nllb.py`` translates with them)."""

from __future__ import annotations

import re

# FLORES-200 code -> BCP-47 tag, the 202 language-script pairs NLLB-200 translates.
# ISO 639-1 where one exists (for the individual language NLLB covers when the 639-1 code
# names a macrolanguage: arb -> ar, zsm -> ms, pes -> fa...), else ISO 639-3. A script subtag
# only where NLLB has the language in two scripts and this is not the usual one (ace-Arab),
# or where no script is the default (zh-Hans, zh-Hant). Santali is ``sat_Beng`` as the
# checkpoints' vocabulary spells it, though its training text is Ol Chiki (FLORES: sat_Olck).
NLLB_LANGUAGES: dict[str, str] = {
    "ace_Arab": "ace-Arab", "ace_Latn": "ace", "acm_Arab": "acm", "acq_Arab": "acq",
    "aeb_Arab": "aeb", "afr_Latn": "af", "ajp_Arab": "ajp", "aka_Latn": "ak",
    "amh_Ethi": "am", "apc_Arab": "apc", "arb_Arab": "ar", "ars_Arab": "ars",
    "ary_Arab": "ary", "arz_Arab": "arz", "asm_Beng": "as", "ast_Latn": "ast",
    "awa_Deva": "awa", "ayr_Latn": "ay", "azb_Arab": "azb", "azj_Latn": "az",
    "bak_Cyrl": "ba", "bam_Latn": "bm", "ban_Latn": "ban", "bel_Cyrl": "be",
    "bem_Latn": "bem", "ben_Beng": "bn", "bho_Deva": "bho", "bjn_Arab": "bjn-Arab",
    "bjn_Latn": "bjn", "bod_Tibt": "bo", "bos_Latn": "bs", "bug_Latn": "bug",
    "bul_Cyrl": "bg", "cat_Latn": "ca", "ceb_Latn": "ceb", "ces_Latn": "cs",
    "cjk_Latn": "cjk", "ckb_Arab": "ckb", "crh_Latn": "crh", "cym_Latn": "cy",
    "dan_Latn": "da", "deu_Latn": "de", "dik_Latn": "dik", "dyu_Latn": "dyu",
    "dzo_Tibt": "dz", "ell_Grek": "el", "eng_Latn": "en", "epo_Latn": "eo",
    "est_Latn": "et", "eus_Latn": "eu", "ewe_Latn": "ee", "fao_Latn": "fo",
    "fij_Latn": "fj", "fin_Latn": "fi", "fon_Latn": "fon", "fra_Latn": "fr",
    "fur_Latn": "fur", "fuv_Latn": "ff", "gaz_Latn": "om", "gla_Latn": "gd",
    "gle_Latn": "ga", "glg_Latn": "gl", "grn_Latn": "gn", "guj_Gujr": "gu",
    "hat_Latn": "ht", "hau_Latn": "ha", "heb_Hebr": "he", "hin_Deva": "hi",
    "hne_Deva": "hne", "hrv_Latn": "hr", "hun_Latn": "hu", "hye_Armn": "hy",
    "ibo_Latn": "ig", "ilo_Latn": "ilo", "ind_Latn": "id", "isl_Latn": "is",
    "ita_Latn": "it", "jav_Latn": "jv", "jpn_Jpan": "ja", "kab_Latn": "kab",
    "kac_Latn": "kac", "kam_Latn": "kam", "kan_Knda": "kn", "kas_Arab": "ks",
    "kas_Deva": "ks-Deva", "kat_Geor": "ka", "kaz_Cyrl": "kk", "kbp_Latn": "kbp",
    "kea_Latn": "kea", "khk_Cyrl": "mn", "khm_Khmr": "km", "kik_Latn": "ki",
    "kin_Latn": "rw", "kir_Cyrl": "ky", "kmb_Latn": "kmb", "kmr_Latn": "ku",
    "knc_Arab": "knc-Arab", "knc_Latn": "knc", "kon_Latn": "kg", "kor_Hang": "ko",
    "lao_Laoo": "lo", "lij_Latn": "lij", "lim_Latn": "li", "lin_Latn": "ln",
    "lit_Latn": "lt", "lmo_Latn": "lmo", "ltg_Latn": "ltg", "ltz_Latn": "lb",
    "lua_Latn": "lua", "lug_Latn": "lg", "luo_Latn": "luo", "lus_Latn": "lus",
    "lvs_Latn": "lv", "mag_Deva": "mag", "mai_Deva": "mai", "mal_Mlym": "ml",
    "mar_Deva": "mr", "min_Latn": "min", "mkd_Cyrl": "mk", "mlt_Latn": "mt",
    "mni_Beng": "mni", "mos_Latn": "mos", "mri_Latn": "mi", "mya_Mymr": "my",
    "nld_Latn": "nl", "nno_Latn": "nn", "nob_Latn": "nb", "npi_Deva": "ne",
    "nso_Latn": "nso", "nus_Latn": "nus", "nya_Latn": "ny", "oci_Latn": "oc",
    "ory_Orya": "or", "pag_Latn": "pag", "pan_Guru": "pa", "pap_Latn": "pap",
    "pbt_Arab": "ps", "pes_Arab": "fa", "plt_Latn": "mg", "pol_Latn": "pl",
    "por_Latn": "pt", "prs_Arab": "prs", "quy_Latn": "qu", "ron_Latn": "ro",
    "run_Latn": "rn", "rus_Cyrl": "ru", "sag_Latn": "sg", "san_Deva": "sa",
    "sat_Beng": "sat", "scn_Latn": "scn", "shn_Mymr": "shn", "sin_Sinh": "si",
    "slk_Latn": "sk", "slv_Latn": "sl", "smo_Latn": "sm", "sna_Latn": "sn",
    "snd_Arab": "sd", "som_Latn": "so", "sot_Latn": "st", "spa_Latn": "es",
    "als_Latn": "sq", "srd_Latn": "sc", "srp_Cyrl": "sr", "ssw_Latn": "ss",
    "sun_Latn": "su", "swe_Latn": "sv", "swh_Latn": "sw", "szl_Latn": "szl",
    "tam_Taml": "ta", "taq_Latn": "taq", "taq_Tfng": "taq-Tfng", "tat_Cyrl": "tt",
    "tel_Telu": "te", "tgk_Cyrl": "tg", "tgl_Latn": "tl", "tha_Thai": "th",
    "tir_Ethi": "ti", "tpi_Latn": "tpi", "tsn_Latn": "tn", "tso_Latn": "ts",
    "tuk_Latn": "tk", "tum_Latn": "tum", "tur_Latn": "tr", "twi_Latn": "tw",
    "tzm_Tfng": "tzm", "uig_Arab": "ug", "ukr_Cyrl": "uk", "umb_Latn": "umb",
    "urd_Arab": "ur", "uzn_Latn": "uz", "vec_Latn": "vec", "vie_Latn": "vi",
    "war_Latn": "war", "wol_Latn": "wo", "xho_Latn": "xh", "ydd_Hebr": "yi",
    "yor_Latn": "yo", "yue_Hant": "yue", "zho_Hans": "zh-Hans", "zho_Hant": "zh-Hant",
    "zsm_Latn": "ms", "zul_Latn": "zu",
}

# Language subtags that mean one of the above (deprecated, macrolanguage or 639-3 forms).
_LANGUAGE_ALIASES = {
    "no": "nb", "nor": "nb", "nob": "nb", "iw": "he", "in": "id", "ji": "yi", "jw": "jv",
    "fil": "tl", "cmn": "zh", "zho": "zh", "chi": "zh", "ara": "ar", "arb": "ar",
    "fas": "fa", "per": "fa", "pes": "fa", "msa": "ms", "may": "ms", "zsm": "ms",
    "sqi": "sq", "alb": "sq", "als": "sq", "lav": "lv", "lvs": "lv", "est": "et",
    "ekk": "et", "swa": "sw", "swh": "sw", "uzb": "uz", "uzn": "uz", "yid": "yi",
    "ydd": "yi", "aze": "az", "azj": "az", "mon": "mn", "khk": "mn", "nep": "ne",
    "npi": "ne", "ori": "or", "ory": "or", "pus": "ps", "pbt": "ps", "mlg": "mg",
    "plt": "mg", "que": "qu", "quy": "qu", "aym": "ay", "ayr": "ay", "orm": "om",
    "gaz": "om", "grn": "gn", "kur": "ku", "kmr": "ku", "ful": "ff", "fuv": "ff",
    "kon": "kg", "kau": "knc", "kr": "knc", "tmh": "taq", "aka": "ak", "twi": "tw",
}
# A region that picks a script where the language is written in two (zh-TW -> Hant).
_REGION_SCRIPT = {("zh", "TW"): "Hant", ("zh", "HK"): "Hant", ("zh", "MO"): "Hant"}
_DEFAULT_SCRIPT = {"zh": "Hans"}  # languages whose tags above all carry a script subtag
# Scripts that name another NLLB language than the tag's default one.
_SCRIPT_LANGUAGE = {("az", "Arab"): "azb_Arab", ("ku", "Arab"): "ckb_Arab",
                    ("sat", "Olck"): "sat_Beng"}

_TAG = re.compile(r"^([a-z]{2,3})(?:-([a-z]{4}))?(?:-([a-z]{2}|\d{3}))?(?:-.*)?$")


def _index() -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """(language, script) -> code, and language -> the code of its default script."""
    by_script: dict[tuple[str, str], str] = {}
    default: dict[str, str] = {}
    for code, tag in NLLB_LANGUAGES.items():
        language, _, tag_script = tag.partition("-")
        by_script[(language, code.split("_")[1])] = code
        if not tag_script:
            default[language] = code
    for language, script in _DEFAULT_SCRIPT.items():
        default[language] = by_script[(language, script)]
    by_script.update(_SCRIPT_LANGUAGE)
    return by_script, default


_BY_SCRIPT, _DEFAULT = _index()
#: Primary language subtags served (what the registry's ``languages`` lists: zh, sr, pt...).
PRIMARY_LANGUAGES = frozenset(tag.split("-")[0] for tag in NLLB_LANGUAGES.values())


def nllb_code(tag: str) -> str | None:
    """The NLLB code for a BCP-47 tag, or None when NLLB does not translate it.

    The region is ignored except where it picks a script: ``pt-BR`` and ``pt-PT`` ->
    ``por_Latn``, ``es-419`` -> ``spa_Latn``, ``zh`` / ``zh-CN`` -> ``zho_Hans``, ``zh-TW`` /
    ``zh-HK`` -> ``zho_Hant``. A script NLLB lacks for that language gives None (``sr-Latn``:
    NLLB writes Serbian in Cyrillic only). An NLLB code itself (``por_Latn``) is accepted.
    """
    if tag in NLLB_LANGUAGES:
        return tag
    match = _TAG.match(tag.strip().replace("_", "-").lower())
    if match is None:
        return None
    language, script, region = match.groups()
    language = _LANGUAGE_ALIASES.get(language, language)
    if script is None and region is not None:
        script = _REGION_SCRIPT.get((language, region.upper()))
    if script is None:
        return _DEFAULT.get(language)
    return _BY_SCRIPT.get((language, script.title()))


__all__ = ["NLLB_LANGUAGES", "PRIMARY_LANGUAGES", "nllb_code"]
