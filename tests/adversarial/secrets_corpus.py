"""A corpus of secrets and of look-alikes, for the redaction tests and the grep over every output
channel. Every value is fake, but shaped as the real ones are (token formats as their issuers
document them). ``SECRETS`` must never appear in anything traintel writes or exports;
``LOOK_ALIKES`` must appear unchanged (over-redaction destroys diagnostics)."""

from __future__ import annotations

# -- config keys that hold secrets, by whole name tokens --------------------------------------
SECRET_CONFIG = {
    "password": "hunter2-correct-horse",
    "db_pwd": "pw-Zx81kq-Lm2",
    "ssl_passphrase": "open sesame 42",
    "auth": "auth-7f3a9c2e51",
    "jwt": "jwt-value-0a1b2c3d4e",
    "github_pat": "pat-value-9z8y7x6w5v",
    "hfToken": "hfvalue-Kq3mZ8xP2",
    "OPENAI_API_KEY": "openai-value-r4T7yU1",
    "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "session_id": "sess-0f9e8d7c6b5a",
    "webhook_url": "https://example.com/hooks/wh-Q1w2E3r4T5",
    "db": {"dsn": "postgres://svc:dsn-pw-77aa@db.internal:5432/runs"},
    "cookie": "cookie-value-ZZ91xx",
}

# -- values whose shape says "secret", wherever they appear (no key tells) --------------------
GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
HF_TOKEN = "hf_" + "QmZxWvUtSrQpOnMlKjIhGfEdCbAz123456"
OPENAI_KEY = "sk-proj-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SLACK_TOKEN = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
GITLAB_TOKEN = "glpat-" + "aB3dE6gH9jK2mN5pQ8sT"
URL_PASSWORD = "url-pw-Tg7Hj2Kl9"
URL_WITH_CREDENTIALS = f"https://alice:{URL_PASSWORD}@collector.example.com:4318"
BEARER = "bearer-abc.def.ghi-123456"
BASIC = "dXNlcjpwYXNzd29yZC0xMjM="
AMZ_SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
SIGNED_URL = (
    "https://bucket.s3.amazonaws.com/ckpt.pt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Date=20261130T000000Z&X-Amz-Signature={AMZ_SIGNATURE}"
)
ARGV_TOKEN = "argv-token-Pp0Oo9Ii8"
ARGV = ["train.py", "--lr", "3e-4", "--hf-token", ARGV_TOKEN, f"--wandb-api-key={HF_TOKEN}"]
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
PEM = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----"

#: free text carrying secrets, as exception messages, log lines and event fields do
SECRET_TEXTS = [
    f"could not reach {URL_WITH_CREDENTIALS}/v1/metrics",
    f"request failed: Authorization: Bearer {BEARER}",
    f"headers={{'Authorization': 'Basic {BASIC}'}}",
    f"pushing with {GITHUB_TOKEN} to github.com",
    f"login(token={HF_TOKEN!r}) failed",
    f"client = OpenAI(api_key='{OPENAI_KEY}')",
    f"AWS access key {AWS_KEY_ID} is not authorised",
    f"slack says no to {SLACK_TOKEN}",
    f"decoded {JWT}",
    f"gitlab {GITLAB_TOKEN} expired",
    f"download {SIGNED_URL} failed with 403",
    f"cmd: python train.py --hf-token {ARGV_TOKEN} --lr 1e-3",
    f"key material:\n{PEM}\n",
    "connecting with password=plain-pw-Xy12 user=svc",
]

#: every secret string that must never be written or exported
SECRETS = sorted(
    {v for v in SECRET_CONFIG.values() if isinstance(v, str)}
    | {
        "dsn-pw-77aa",
        GITHUB_TOKEN,
        HF_TOKEN,
        OPENAI_KEY,
        AWS_KEY_ID,
        SLACK_TOKEN,
        JWT,
        GITLAB_TOKEN,
        URL_PASSWORD,
        BEARER,
        BASIC,
        AMZ_SIGNATURE,
        ARGV_TOKEN,
        PEM_BODY,
        "plain-pw-Xy12",
    }
)

# -- look-alikes: keys and text that must survive ----------------------------------------------
LOOK_ALIKE_CONFIG = {
    "sort_key": "val_loss",
    "pad_token": "<pad>",
    "pad_token_id": 0,
    "eos_token": "</s>",
    "bos_token": "<s>",
    "mask_token": "[MASK]",
    "rng_key": 42,
    "prng_key": 7,
    "num_tokens": 1_000_000,
    "max_tokens": 2048,
    "max_new_tokens": 256,
    "tokens_per_second": 1234.5,
    "token_budget": 4096,
    "tokenizer_name": "gpt2",
    "key_dim": 64,
    "cache_key": "layer-norm-cache",
    "primary_key": "run_id",
    "password_min_length": 12,
    "secret_name": "training-credentials",
    "author": "Ada Lovelace",
    "num_passes": 3,
    "keyboard": "us",
    "auth_method": "oidc",
    "monkey_patch": True,
    "key": "embed.weight",
    "passes": 2,
    "bypass_cache": False,
    "compass": "north",
    "data_url": "https://huggingface.co/datasets/tiny_shakespeare",
}
LOOK_ALIKE_TEXTS = [
    "loss=0.5 lr=3e-4 pad_token=<pad> sort_key=val_loss",
    "unexpected key: embed.weight in state_dict",
    "cloning git@github.com:org/repo.git at commit 3f2a9c1e5b7d9f0a2c4e6b8d0f1a3c5e7b9d1f2a",
    "Basic block of ResNet, bearer of news",
    "token embeddings resized to 50257; --max-tokens 512 --pad-token-id 0",
    "fetched https://huggingface.co/gpt2/resolve/main/config.json",
    "sk-learn style API",
]
