"""Job parsing: the dispatcher's flat dictionary of strings -> Job, or JobDefinitionError with a code."""

from __future__ import annotations

import uuid

import pytest

from pilot.errors import ErrorCode
from pilot.job import MAX_NAME, JobDefinitionError, parse_job
from sitemovers.checksum import Checksum


def rejected(raw) -> JobDefinitionError:
    with pytest.raises(JobDefinitionError) as info:
        parse_job(raw)
    return info.value


# --- scalars ----------------------------------------------------------------------------------------
def test_all_scalar_fields_are_parsed(job_dict):
    job = parse_job(job_dict(
        jobsetID="11", jobDefinitionID="12", taskID="13", homepackage="AtlasProduction/21.0",
        swRelease="Atlas-21.0", cmtConfig="x86_64-centos7-gcc8-opt", processingType="reco",
        prodSourceLabel="managed", prodUserID="/DC=ch/CN=someone", coreCount="8", minRamCount="2000",
        maxCpuCount="3600", maxDiskCount="5000", maxWalltime="7200", transferType="direct",
        destinationSE="SITE_DATADISK", nSent="4", resource_type="MCORE", container_name="centos7",
    ))
    assert job.panda_id == 4242
    assert job.attempt_nr == 2
    assert job.transformation == "Reco_tf.py"
    assert job.job_pars == "--inputFile in1.root --outputFile out1.root"
    assert (job.jobset_id, job.job_definition_id, job.task_id) == (11, 12, 13)
    assert job.home_package == "AtlasProduction/21.0"
    assert job.sw_release == "Atlas-21.0"
    assert job.cmt_config == "x86_64-centos7-gcc8-opt"
    assert job.processing_type == "reco"
    assert job.prod_source_label == "managed"
    assert job.prod_user_id == "/DC=ch/CN=someone"
    assert job.core_count == 8
    assert job.min_ram_count == 2000
    assert job.max_cpu_count == 3600
    assert job.max_disk_count == 5000
    assert job.max_walltime == 7200
    assert job.transfer_type == "direct"
    assert job.destination_se == "SITE_DATADISK"
    assert job.n_sent == 4
    assert job.resource_type == "MCORE"
    assert job.container_name == "centos7"
    assert job.raw["PandaID"] == "4242"


def test_unset_scalars_take_defaults(job_dict):
    job = parse_job(job_dict(coreCount="NULL", minRamCount="null", maxCpuCount="", prodSourceLabel="NULL",
                             attemptNr=None, taskID=None))
    assert job.core_count == 1
    assert job.min_ram_count == 0
    assert job.max_cpu_count == 0
    assert job.prod_source_label == "managed"
    assert job.attempt_nr == 0
    assert job.task_id == 0


def test_core_count_is_at_least_one(job_dict):
    assert parse_job(job_dict(coreCount="0")).core_count == 1


def test_decimal_number_is_truncated(job_dict):
    assert parse_job(job_dict(maxCpuCount="3600.7")).max_cpu_count == 3600


@pytest.mark.parametrize("key", ["coreCount", "minRamCount", "maxCpuCount", "maxDiskCount", "nSent", "taskID"])
def test_non_numeric_scalar_is_a_conversion_failure(job_dict, key):
    err = rejected(job_dict(**{key: "lots"}))
    assert err.code == ErrorCode.CONVERSION_FAILURE == 1302
    assert err.panda_id == 4242
    assert key in err.diag


def test_missing_transformation_is_not_defined(job_dict):
    err = rejected(job_dict(transformation="NULL"))
    assert err.code == ErrorCode.NOT_DEFINED
    assert err.panda_id == 4242


def test_control_character_in_transformation_is_refused(job_dict):
    err = rejected(job_dict(transformation="Reco_tf.py\x00rm"))
    assert err.code == ErrorCode.CONVERSION_FAILURE


# --- PandaID and attempt number ---------------------------------------------------------------------
@pytest.mark.parametrize("panda_id", [None, "NULL", "null", "", "0", "-3", "abc", "12x"])
def test_missing_or_bad_panda_id_is_not_defined(job_dict, panda_id):
    err = rejected(job_dict(PandaID=panda_id))
    assert err.code == ErrorCode.NOT_DEFINED == 1311
    assert err.panda_id is None


@pytest.mark.parametrize("raw", [None, [], "PandaID=1", 42])
def test_definition_that_is_not_a_mapping_is_not_defined(raw):
    err = rejected(raw)
    assert err.code == ErrorCode.NOT_DEFINED
    assert err.panda_id is None


def test_attempt_number_is_kept_when_the_rest_is_broken(job_dict):
    err = rejected(job_dict(attemptNr="3", fsize="x,y"))
    assert err.code == ErrorCode.CONVERSION_FAILURE
    assert (err.panda_id, err.attempt_nr) == (4242, 3)


def test_broken_attempt_number_is_itself_reported(job_dict):
    err = rejected(job_dict(attemptNr="first"))
    assert err.code == ErrorCode.CONVERSION_FAILURE
    assert (err.panda_id, err.attempt_nr) == (4242, 0)


# --- input and output files -------------------------------------------------------------------------
def test_input_lists_are_matched_by_position(job_dict):
    job = parse_job(job_dict())
    first, second = job.inputs
    assert [s.lfn for s in job.inputs] == ["in1.root", "in2.root"]
    assert (first.kind, first.guid, first.fsize, first.scope) == ("input", "g-in1", 100, "mc16")
    assert (first.dispatch_dblock, first.dataset, first.ddm_endpoint) == ("disp1", "ds.in1", "EP_A")
    assert first.checksum == Checksum("adler32", "0000abcd")
    assert first.token == "" and not first.direct_access_forbidden
    assert (second.guid, second.fsize, second.scope, second.dataset) == ("g-in2", 200, "data18", "ds.in2")
    assert second.checksum == Checksum("md5", "0123456789abcdef0123456789abcdef")
    assert second.token == "local" and second.direct_access_forbidden


def test_output_lists_are_matched_by_position(job_dict):
    job = parse_job(job_dict(outFiles="out1.root,out2.root,log.tgz", realDatasets="ds.o1,ds.o2,ds.log",
                             scopeOut="s1,s2,s3", ddmEndPointOut="E1,E2,E3",
                             destinationDBlockToken="T1,NULL,T3"))
    assert [s.lfn for s in job.outputs] == ["out1.root", "out2.root"]
    one, two = job.outputs
    assert (one.kind, one.dataset, one.scope, one.ddm_endpoint, one.token) == ("output", "ds.o1", "s1", "E1", "T1")
    assert (two.dataset, two.scope, two.ddm_endpoint, two.token) == ("ds.o2", "s2", "E2", "")


@pytest.mark.parametrize("null", ["NULL", "null", "", " "])
def test_null_entries_are_skipped_and_keep_the_others_aligned(job_dict, null):
    job = parse_job(job_dict(inFiles=f"a.root,{null},c.root", GUID="ga,gb,gc", fsize="1,2,3",
                             checksum="ad:00000001,ad:00000002,ad:00000003", scopeIn="sa,sb,sc",
                             dispatchDblock="da,db,dc", realDatasetsIn="ra,rb,rc",
                             prodDBlockToken="ta,tb,tc", ddmEndPointIn="ea,eb,ec"))
    assert [(s.lfn, s.guid, s.fsize, s.scope, s.dataset) for s in job.inputs] == [
        ("a.root", "ga", 1, "sa", "ra"),
        ("c.root", "gc", 3, "sc", "rc"),
    ]
    assert job.inputs[1].checksum == Checksum("adler32", "00000003")


def test_null_attribute_entry_leaves_that_attribute_unset(job_dict):
    job = parse_job(job_dict(GUID="NULL,g2", fsize="NULL,5", checksum="ad:00000001,NULL"))
    first, second = job.inputs
    assert (first.guid, first.fsize, first.checksum) == ("", None, Checksum("adler32", "00000001"))
    assert (second.guid, second.fsize, second.checksum) == ("g2", 5, None)


def test_wholly_null_attribute_list_is_allowed(job_dict):
    job = parse_job(job_dict(GUID="NULL", fsize="NULL", checksum="NULL"))
    assert [(s.guid, s.fsize, s.checksum) for s in job.inputs] == [("", None, None), ("", None, None)]


def test_no_input_files(job_dict):
    job = parse_job(job_dict(inFiles="NULL", GUID="NULL", fsize="NULL", checksum="NULL", scopeIn="NULL",
                             dispatchDblock="NULL", realDatasetsIn="NULL", prodDBlockToken="NULL",
                             ddmEndPointIn="NULL"))
    assert job.inputs == []


def test_spaces_around_list_entries_are_ignored(job_dict):
    job = parse_job(job_dict(inFiles=" in1.root , in2.root ", fsize=" 100 , 200 "))
    assert [(s.lfn, s.fsize) for s in job.inputs] == [("in1.root", 100), ("in2.root", 200)]


@pytest.mark.parametrize("key, value", [
    ("GUID", "g1"), ("fsize", "1,2,3"), ("checksum", "ad:00000001"), ("scopeIn", "a,b,c"),
    ("dispatchDblock", "d"), ("realDatasetsIn", "r1,r2,r3"), ("prodDBlockToken", "t"), ("ddmEndPointIn", "e"),
    ("realDatasets", "d1,d2,d3"), ("scopeOut", "s1,s2,s3"), ("ddmEndPointOut", "e1,e2,e3"),
    ("destinationDBlockToken", "t1,t2,t3"), ("destinationDblock", "dd1,dd2,dd3"),
])
def test_lists_of_different_lengths_are_refused(job_dict, key, value):
    err = rejected(job_dict(**{key: value}))
    assert err.code == ErrorCode.NOT_SAME_LENGTH == 1312
    assert err.panda_id == 4242


@pytest.mark.parametrize("fsize", ["big,100", "1.5,2", "0x10,2"])
def test_non_numeric_file_size_is_a_conversion_failure(job_dict, fsize):
    err = rejected(job_dict(fsize=fsize))
    assert err.code == ErrorCode.CONVERSION_FAILURE == 1302
    assert err.panda_id == 4242


def test_negative_file_size_is_a_conversion_failure(job_dict):
    err = rejected(job_dict(fsize="100,-1"))
    assert err.code == ErrorCode.CONVERSION_FAILURE
    assert "negative" in err.diag


def test_zero_file_size_is_allowed(job_dict):
    assert parse_job(job_dict(fsize="0,0")).inputs[0].fsize == 0


# --- checksums --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, value", [
    ("ad:0a1b2c3d", "adler32", "0a1b2c3d"),
    ("AD:0A1B2C3D", "adler32", "0a1b2c3d"),
    ("adler32:0a1b2c3d", "adler32", "0a1b2c3d"),
    ("ad:abcd", "adler32", "0000abcd"),
    ("adler32:1", "adler32", "00000001"),
    ("md5:0123456789ABCDEF0123456789abcdef", "md5", "0123456789abcdef0123456789abcdef"),
    ("0a1b2c3d", "adler32", "0a1b2c3d"),
    ("0123456789abcdef0123456789abcdef", "md5", "0123456789abcdef0123456789abcdef"),
])
def test_checksum_forms(job_dict, text, kind, value):
    job = parse_job(job_dict(checksum=f"{text},NULL"))
    assert job.inputs[0].checksum == Checksum(kind, value)


@pytest.mark.parametrize("text", [
    "sha1:0a1b2c3d",  # unknown type
    "ad:0a1b2c3g",  # not hex
    "ad:123456789",  # adler32 longer than 8 digits
    "md5:0123",  # md5 that is not 32 digits
    "0a1b2c3d0a",  # bare, neither 8 nor 32 digits
    "ad:",  # no value
    "zzzzzzzz",  # bare, not hex
])
def test_bad_checksum_is_unknown_checksum_type(job_dict, text):
    err = rejected(job_dict(checksum=f"{text},NULL"))
    assert err.code == ErrorCode.UNKNOWN_CHECKSUM_TYPE == 1314
    assert err.panda_id == 4242


def test_checksum_text_form_round_trips():
    assert str(Checksum.parse("adler32:abc")) == "ad:00000abc"
    assert Checksum.parse(str(Checksum.parse("md5:" + "A" * 32))) == Checksum("md5", "a" * 32)


# --- hostile names ----------------------------------------------------------------------------------
HOSTILE = [
    "../etc/passwd", "a/b.root", "/abs.root", "..", ".", "a\x00b", "a\nb", "a\rb", "a\tb", "a\x1bb",
    "a\x7fb", "a\x85b", "a\u202eb", "a\\b", "-rf", "--output=x", "x" * (MAX_NAME + 1),
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_input_name_is_refused_with_panda_id_kept(job_dict, name):
    err = rejected(job_dict(inFiles=f"ok.root,{name}", attemptNr="5"))
    assert err.code == ErrorCode.BAD_FILE_NAME == 1371
    assert (err.panda_id, err.attempt_nr) == (4242, 5)
    assert "\n" not in err.diag and "\x00" not in err.diag


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_output_name_is_refused(job_dict, name):
    err = rejected(job_dict(outFiles=f"{name},log.tgz"))
    assert err.code == ErrorCode.BAD_FILE_NAME
    assert err.panda_id == 4242


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_log_name_is_refused(job_dict, name):
    err = rejected(job_dict(outFiles="out1.root", realDatasets="NULL", scopeOut="NULL", ddmEndPointOut="NULL",
                            destinationDBlockToken="NULL", logFile=name))
    assert err.code == ErrorCode.BAD_FILE_NAME
    assert err.panda_id == 4242


@pytest.mark.parametrize("key, value", [
    ("scopeIn", "../../etc,data18"),
    ("scopeIn", "mc16,a/b"),
    ("scopeOut", "..,mc16"),
    ("scopeOut", "mc16,x\x00y"),
    ("scopeLog", "../elsewhere"),
])
def test_hostile_scope_is_refused(job_dict, key, value):
    """Scopes become directories of the storage path (staging.Stager.url): data, never paths."""
    err = rejected(job_dict(**{key: value}))
    assert err.code == ErrorCode.BAD_FILE_NAME
    assert err.panda_id == 4242


def test_longest_allowed_name_and_odd_but_harmless_names_pass(job_dict):
    names = ["x" * MAX_NAME, "a..b.root", "with space.root", "x-y.root", "ünïcode.root"]
    job = parse_job(job_dict(inFiles=",".join(names), GUID="NULL", fsize="NULL", checksum="NULL", scopeIn="NULL",
                             dispatchDblock="NULL", realDatasetsIn="NULL", prodDBlockToken="NULL",
                             ddmEndPointIn="NULL"))
    assert [s.lfn for s in job.inputs] == names


@pytest.mark.parametrize("overrides", [
    {"inFiles": "same.root,same.root"},
    {"outFiles": "same.root,same.root,log.tgz", "realDatasets": "NULL", "scopeOut": "NULL",
     "ddmEndPointOut": "NULL", "destinationDBlockToken": "NULL"},
])
def test_duplicated_names_are_refused(job_dict, overrides):
    err = rejected(job_dict(**overrides))
    assert err.code == ErrorCode.BAD_FILE_NAME
    assert "twice" in err.diag


# --- log file ---------------------------------------------------------------------------------------
def test_log_file_is_separated_from_outputs(job_dict):
    job = parse_job(job_dict())
    assert [s.lfn for s in job.outputs] == ["out1.root"]
    assert job.log.lfn == "log.tgz"
    assert job.log.kind == "log"
    assert job.log.guid == "log-guid-1"
    assert job.log.scope == "mc16log"  # scopeLog wins over the scopeOut entry
    assert job.log.dataset == "ds.log"  # the log keeps its position's attributes
    assert job.log.ddm_endpoint == "EP_LOG"
    assert [s.lfn for s in job.all_outputs] == ["out1.root", "log.tgz"]


def test_log_scope_falls_back_to_its_output_entry(job_dict):
    assert parse_job(job_dict(scopeLog="NULL")).log.scope == "mc16"


def test_log_file_not_among_outputs(job_dict):
    job = parse_job(job_dict(outFiles="out1.root", realDatasets="NULL", scopeOut="NULL", ddmEndPointOut="NULL",
                             destinationDBlockToken="NULL", logFile="other.log.tgz"))
    assert [s.lfn for s in job.outputs] == ["out1.root"]
    assert (job.log.lfn, job.log.kind, job.log.guid) == ("other.log.tgz", "log", "log-guid-1")


def test_default_log_name_and_generated_guids(job_dict):
    job = parse_job(job_dict(logFile="NULL", logGUID=None, outFiles="a.root,b.root", realDatasets="NULL",
                             scopeOut="NULL", ddmEndPointOut="NULL", destinationDBlockToken="NULL"))
    assert job.log.lfn == "4242.job.log.tgz"
    guids = [job.log.guid, *(s.guid for s in job.outputs)]
    assert all(uuid.UUID(g) for g in guids)
    assert len(set(guids)) == 3


# --- kind of job ------------------------------------------------------------------------------------
@pytest.mark.parametrize("transformation, label, analysis", [
    ("http://pandaserver/trf/user/runGen-00-00-02", "managed", True),
    ("https://pandaserver/trf/user/runAthena", "managed", True),
    ("Reco_tf.py", "user", True),
    ("Reco_tf.py", "managed", False),
    ("Reco_tf.py", "NULL", False),
])
def test_is_analysis(job_dict, transformation, label, analysis):
    assert parse_job(job_dict(transformation=transformation, prodSourceLabel=label)).is_analysis is analysis


def test_non_string_values_are_accepted(job_dict):
    raw = job_dict()
    raw.update({"PandaID": 4242, "attemptNr": 1, "coreCount": 4, "minRamCount": None})
    job = parse_job(raw)
    assert (job.panda_id, job.attempt_nr, job.core_count, job.min_ram_count) == (4242, 1, 4, 0)


def test_output_lists_without_the_log_entry_match_the_other_outputs(job_dict):
    # the server's scopeOut has one entry per output but none for the log, which outFiles does list
    job = parse_job(job_dict(outFiles="a.root,job.log.tgz,b.root", logFile="job.log.tgz",
                             scopeOut="sa,sb", scopeLog="slog", destinationDblock="d1,dlog,d2"))
    assert [(o.lfn, o.scope, o.destination_dblock) for o in job.outputs] == [("a.root", "sa", "d1"),
                                                                            ("b.root", "sb", "d2")]
    assert (job.log.lfn, job.log.scope) == ("job.log.tgz", "slog")


@pytest.mark.parametrize("key, value", [
    ("scopeLog", "journal.json"),  # a pilot file's name
    ("scopeOut", "tmp,mc16"),
    ("scopeIn", "*,mc16"),  # not in the server's scope syntax
    ("scopeIn", "mc16,a b"),
    ("scopeOut", "x" * 26 + ",mc16"),  # longer than a scope may be
    ("scopeOut", "True,mc16"),  # a JSON boolean turned into text
    ("scopeLog", ".hidden"),
    ("scopeIn", "mc16,sc\u00f6pe"),
])
def test_scope_follows_the_servers_scope_syntax(job_dict, key, value):
    err = rejected(job_dict(**{key: value}))
    assert err.code == ErrorCode.BAD_FILE_NAME and err.panda_id == 4242
    assert "scope" in err.diag


def test_real_scopes_pass(job_dict):
    job = parse_job(job_dict(scopeIn="user.jdoe,mc16_13TeV", scopeLog="group.phys-higgs"))
    assert [s.scope for s in job.inputs] == ["user.jdoe", "mc16_13TeV"] and job.log.scope == "group.phys-higgs"


@pytest.mark.parametrize("key, value", [
    ("jobPars", "--in a\x00b"),
    ("transformation", "run\x00.sh"),
    ("homepackage", "Athena\x00"),
    ("jobPars", "--opt \ud800"),
    ("swRelease", "\udcff"),
    ("odd\x00key", "x"),
])
def test_nul_or_lone_surrogate_anywhere_is_a_malformed_definition(job_dict, key, value):
    err = rejected(job_dict(**{key: value}))
    assert err.code == ErrorCode.CONVERSION_FAILURE == 1302 and err.panda_id == 4242
    assert "\x00" not in err.diag and all(not 0xD800 <= ord(c) <= 0xDFFF for c in err.diag)


@pytest.mark.parametrize("key, value", [
    ("coreCount", "\u0664"),  # ARABIC-INDIC DIGIT FOUR
    ("maxDiskCount", "1_000"),
    ("minRamCount", " +12"),
    ("fsize", "100,\uff12"),  # FULLWIDTH DIGIT TWO
    ("fsize", "1e3,2"),
])
def test_numbers_are_ascii_digits_only(job_dict, key, value):
    err = rejected(job_dict(**{key: value}))
    assert err.code == ErrorCode.CONVERSION_FAILURE


def test_absurd_file_size_is_a_malformed_definition_not_a_disk_problem(job_dict):
    err = rejected(job_dict(fsize=f"100,{2**60}"))
    assert err.code == ErrorCode.CONVERSION_FAILURE and "out of range" in err.diag
