"""Make docs/label-studio-data-manager.png and docs/label-studio-labelling.png from a real Label Studio.

    LS_DATA_DIR=/tmp/ls-shots scripts/labelstudio.sh start 18089
    .venv/bin/python scripts/label_studio_screenshots.py http://127.0.0.1:18089 DIR_WITH_PLAYWRIGHT_CORE

It sets a project up as nerloop does (``set_up_label_studio``'s view; the bulk import and the
uncertainty sampling of ``push_predictions``), with 40 sentences of the generated demo corpus and a
prediction per task at model version v2: the gold spans with per-span scores and a task score drawn
at random (the screenshots show how Label Studio presents what nerloop pushes, not a model's
quality). Then headless Chromium (playwright-core, /usr/bin/chromium) logs in and takes the two pictures.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from active_learning.demo_corpus import generate
from service.label_studio import LabelStudioClient, results_from_spans

REPO = Path(__file__).resolve().parents[1]
TOKEN = "nerloop-legacy-api-token-for-tests-only"  # scripts/labelstudio.sh's fixed local token
NODE = r"""
const { chromium } = require(process.argv[2] + "/node_modules/playwright-core");
const [url, project, view, task, out] = process.argv.slice(3);
(async () => {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  const page = await browser.newPage({ viewport: { width: 1440, height: 860 } });
  await page.goto(`${url}/user/login`);
  await page.fill('input[name="email"]', "admin@nerloop.local");
  await page.fill('input[name="password"]', "nerloop-admin");
  await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  await page.goto(`${url}/projects/${project}/data?tab=${view}`);
  await page.waitForSelector("text=nerloop: most uncertain first", { timeout: 60000 });
  await page.waitForTimeout(4000);
  await page.screenshot({ path: `${out}/label-studio-data-manager.png` });
  await page.goto(`${url}/projects/${project}/data?tab=${view}&task=${task}`);
  await page.waitForSelector(".lsf-region-item, [class*='region']", { timeout: 60000 }).catch(() => {});
  await page.waitForTimeout(6000);
  await page.screenshot({ path: `${out}/label-studio-labelling.png` });
  await browser.close();
})().catch((error) => { console.error(error); process.exit(1); });
"""


def main(url: str, playwright_dir: str) -> None:
    client = LabelStudioClient(url, TOKEN)
    labels = ["PER", "ORG", "LOC", "MISC"]
    ls_id = client.create_project("news", labels)
    view = client.ensure_uncertainty_view(ls_id)
    examples = generate(40, seed=3)
    task_ids = client.import_tasks(ls_id, [{"text": e.text} for e in examples])
    rng = random.Random(3)
    predictions = []
    for example, task_id in zip(examples, task_ids):
        spans = [[s.start, s.end, s.label, rng.uniform(0.55, 0.99)] for s in example.spans if s.label in labels]
        score = min([s[3] for s in spans], default=rng.uniform(0.6, 0.99))
        predictions.append({"task": task_id, "result": results_from_spans(example.text, spans), "score": round(score, 4)})
    client.push_predictions(ls_id, predictions, model_version="v2")
    least_confident = min(predictions, key=lambda p: p["score"] if p["result"] else 2)["task"]
    script = Path(playwright_dir) / "screenshots.js"
    script.write_text(NODE)
    subprocess.run(["node", str(script), playwright_dir, url, str(ls_id), str(view), str(least_confident), str(REPO / "docs")], check=True)
    print(json.dumps({"project": ls_id, "view": view, "task": least_confident}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
