// Drives the scheduler's dashboard in the system chromium (playwright-core,
// no downloaded browsers). Run by test_dashboard.sh; every step has its own
// deadline and any failure exits non-zero with the step that failed.
//
// Env: DASH_URL (page), DASH_TASKS (comma list that must show), DASH_PAUSE
// (task to pause), DASH_TRIGGER (task to trigger), DASH_POST (pending post
// id to approve), DASH_REJECT (pending post id to reject, with the reason
// "off-topic this week" typed into the prompt), BTL_JWT_SECRET (to mint the operator token), DASH_PROFILE
// (fresh user-data-dir), DASH_SHOT (screenshot path), DASH_MODULES
// (node_modules holding playwright-core).
import { createHmac } from 'node:crypto';
import { createRequire } from 'node:module';
import { appendFileSync } from 'node:fs';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`dashboard.mjs: ${name} is not set`);
    process.exit(2);
  }
  return v;
};

const url = env('DASH_URL');
const tasks = env('DASH_TASKS').split(',');
const pauseTask = env('DASH_PAUSE');
const triggerTask = env('DASH_TRIGGER');
const postId = env('DASH_POST');
const rejectId = env('DASH_REJECT');
const secret = env('BTL_JWT_SECRET');
const profile = env('DASH_PROFILE');
const shot = env('DASH_SHOT');
const require = createRequire(env('DASH_MODULES') + '/');
const { chromium } = require('playwright-core');

// HS256 JWT, the same claims `btl token --role operator` puts in.
function mintToken(role, ttlSeconds) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const claims = b64({ sub: 'dashboard-test', role, iat: now, exp: now + ttlSeconds });
  const sig = createHmac('sha256', secret).update(`${head}.${claims}`).digest('base64url');
  return `${head}.${claims}.${sig}`;
}

const log = (msg) => console.log(`[dashboard.mjs ${new Date().toISOString()}] ${msg}`);
let step = 'launch';
const problems = [];

const origin = new URL(url).origin;
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1400, height: 900 },
  timeout: 60000,
});
let rc = 0;
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.setDefaultTimeout(20000);
  // The page must be self-contained: nothing but its own origin.
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(origin + '/') && !u.startsWith('data:'))
      problems.push(`request to a foreign URL: ${u}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') appendFileSync(shot + '.console.txt', m.text() + '\n');
  });

  step = 'load the page';
  const resp = await page.goto(url, { waitUntil: 'load' });
  if (!resp || resp.status() !== 200) throw new Error(`GET ${url}: ${resp && resp.status()}`);

  step = 'tasks table shows every configured task';
  for (const t of tasks)
    await page.locator(`#tasks tr[data-task="${t}"] td.name`).filter({ hasText: t }).waitFor();
  log(`tasks shown: ${tasks.join(', ')}`);

  step = 'pending post listed';
  await page.locator(`#pending tr[data-post="${postId}"]`).waitFor();

  step = 'post bodies are text, never markup';
  const bodyCell = page.locator(`#pending tr[data-post="${postId}"] td.wrap`);
  if (!(await bodyCell.innerText()).includes('<b>feature</b>') ||
      (await bodyCell.locator('b').count()) !== 0)
    throw new Error('post body was interpreted as HTML');

  step = 'pipeline counts shown';
  await page.locator('#counts .count[data-status="pending"] b').waitFor();

  const row = page.locator(`#tasks tr[data-task="${pauseTask}"]`);
  step = 'pause without a token is refused visibly';
  await row.locator('button[data-action="pause"]').click();
  await page.locator('#message.error').filter({ hasText: 'token needed' }).waitFor();
  if ((await row.getAttribute('data-paused')) !== 'false')
    throw new Error('task shows paused although the API refused');
  log('pause without token: "token needed" shown');

  step = 'a readonly token may not pause, visibly';
  await page.fill('#token', mintToken('readonly', 3600));
  await page.click('#save-token');
  await row.locator('button[data-action="pause"]').click();
  await page.locator('#message.error').filter({ hasText: 'not allowed' }).waitFor();
  log('pause with a readonly token: "not allowed" shown');

  step = 'enter the operator token';
  await page.fill('#token', mintToken('operator', 3600));
  await page.click('#save-token');
  const stored = await page.evaluate(() => sessionStorage.getItem('btl_token'));
  const local = await page.evaluate(() => localStorage.length);
  if (!stored || local !== 0) throw new Error('token must be in sessionStorage only');

  step = `pause ${pauseTask}`;
  await row.locator('button[data-action="pause"]').click();
  await page.locator(`#tasks tr[data-task="${pauseTask}"][data-paused="true"] td.paused`)
    .filter({ hasText: 'yes' }).waitFor();
  await page.locator(`#tasks tr[data-task="${pauseTask}"] button[data-action="resume"]`).waitFor();
  log(`${pauseTask} shows paused`);

  step = `trigger ${triggerTask}`;
  await page.locator(`#tasks tr[data-task="${triggerTask}"] button[data-action="trigger"]`).click();
  await page.locator('#message.info').filter({ hasText: `trigger ${triggerTask}: done` }).waitFor();

  step = `approve post ${postId}`;
  await page.locator(`#pending tr[data-post="${postId}"] button[data-action="approve"]`).click();
  await page.locator(`#pending tr[data-post="${postId}"]`).waitFor({ state: 'detached' });

  step = `reject post ${rejectId} with a reason`;
  page.once('dialog', (d) => d.accept('off-topic this week'));
  await page.locator(`#pending tr[data-post="${rejectId}"] button[data-action="reject"]`).click();
  await page.locator(`#pending tr[data-post="${rejectId}"]`).waitFor({ state: 'detached' });

  step = 'the manual execution appears (auto-refresh)';
  await page.locator('#executions tbody tr td').filter({ hasText: 'manual' }).first()
    .waitFor({ timeout: 30000 });

  step = 'screenshot';
  await page.screenshot({ path: shot, fullPage: true });
  log(`screenshot: ${shot}`);

  if (problems.length) {
    step = 'page hygiene';
    throw new Error(problems.join('; '));
  }
} catch (e) {
  console.error(`dashboard.mjs FAILED at step "${step}": ${e.message}`);
  try {
    const p = ctx.pages()[0];
    if (p) await p.screenshot({ path: shot.replace(/\.png$/, '-failed.png'), fullPage: true });
  } catch (_) { /* best effort */ }
  rc = 1;
} finally {
  await ctx.close();
}
process.exit(rc);
