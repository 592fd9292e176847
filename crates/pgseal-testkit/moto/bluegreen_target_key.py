"""moto_server with one behaviour of the RDS API that moto 5.2.5 lacks.

`CreateBlueGreenDeployment` takes `TargetResourceConfigurations`: one `TargetKmsKeyId` per
blue resource, under which AWS encrypts that resource's green copy (AWS API reference,
2026-09-29). moto accepts the parameter but ignores it: its green copies blue's
`StorageEncrypted` and `KmsKeyId` (`BlueGreenDeployment._create_green_instance`). This
patch models the API reference and nothing more: after moto made green, the green twin of
each configured blue resource becomes `StorageEncrypted` under its `TargetKmsKeyId`. moto
makes no green read replicas, so a replica's configuration is only recorded.

Every configuration received (and the request's `TargetEngineVersion`) is appended, as one
JSON line per request, to the file named by `PGSEAL_MOTO_BLUEGREEN_RECORD` (when set), so
a test can assert what pgseal sent.

moto already makes green on `TargetEngineVersion` when one is given, which is what pgseal
reads the replication method from (green's major version against blue's); nothing is
patched for it.

Run it as `moto_server` is run: `python bluegreen_target_key.py -H 127.0.0.1 -p PORT`.
"""

import json
import os

from moto.rds import models

_original_init = models.BlueGreenDeployment.__init__


def _field(config, *names):
    for name in names:
        if name in config:
            return config[name]
    return None


def _init_with_target_keys(self, backend, blue_green_deployment_name, source, tags=None, **kwargs):
    configs = kwargs.get("target_resource_configurations") or []
    _original_init(self, backend, blue_green_deployment_name, source, tags, **kwargs)
    pairs = [
        (_field(c, "SourceArn", "source_arn"), _field(c, "TargetKmsKeyId", "target_kms_key_id"))
        for c in configs
    ]
    record = os.environ.get("PGSEAL_MOTO_BLUEGREEN_RECORD")
    if record:
        with open(record, "a") as f:
            f.write(json.dumps({"name": blue_green_deployment_name, "source": source,
                                "configurations": pairs,
                                "target_engine_version": kwargs.get("target_engine_version")}) + "\n")
    for source_arn, key in pairs:
        if source_arn != source or not key:
            continue
        # A cluster's members take their encryption from the cluster.
        if backend._is_cluster(self.target):
            green = models.find_cluster(self.target)
        else:
            green = backend.find_db_from_id(self.target)
        green.storage_encrypted = True
        green.kms_key_id = key


models.BlueGreenDeployment.__init__ = _init_with_target_keys

if __name__ == "__main__":
    from moto.server import main

    main()
