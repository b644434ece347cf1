import express from 'express';
import request from 'supertest';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { LogFields, Logger } from '../log.ts';
import { openSqliteDatabase } from '../store/sqlite-db.ts';
import { SqliteStore } from '../store/sqlite.ts';
import { twilioSignature } from '../twilio/signature.ts';
import { createHooksRouter, twilioStatusHooks } from './hooks-routes.ts';

const TOKEN = 'f'.repeat(32);
const URL_ = 'https://carerelay.example.org/hooks/twilio/status/sms';
const SID = `SM${'a'.repeat(32)}`;
const DELIVERY = 'sms-reminder-24h@appointment/A1#0';

let store: SqliteStore;
let lines: Array<{ message: string } & LogFields>;
let app: express.Express;

beforeEach(async () => {
  store = new SqliteStore(openSqliteDatabase(':memory:'), { closeDatabase: true });
  lines = [];
  const at = (message: string, fields?: LogFields) => void lines.push({ message, ...fields });
  const log: Logger = { info: at, warn: at, error: at, debug: at };
  app = express();
  app.use('/hooks', createHooksRouter({ twilioStatus: new Map([['sms', { authToken: TOKEN, url: URL_ }]]), store, log, now: () => Date.parse('2030-03-15T13:31:00Z') }));
  await store.addDeliveryReceipt({ deliveryId: DELIVERY, output: 'sms', status: 'accepted', providerId: SID, attempt: 1, at: '2030-03-15T13:30:00Z' });
});
afterEach(async () => {
  await store.close();
});

function callback(params: Record<string, string>, token = TOKEN) {
  return request(app)
    .post('/hooks/twilio/status/sms')
    .set('content-type', 'application/x-www-form-urlencoded')
    .set('x-twilio-signature', twilioSignature(token, URL_, params))
    .send(new URLSearchParams(params).toString());
}

const statuses = async () => (await store.listDeliveryReceipts({ deliveryId: DELIVERY })).map((r) => `${r.status}${r.code ? `:${r.code}` : ''}`);

describe('POST /hooks/twilio/status/:output', () => {
  it('records delivered on the delivery that got the SID; a repeated callback records nothing more', async () => {
    const params = { AccountSid: `AC${'0'.repeat(32)}`, MessageSid: SID, MessageStatus: 'delivered', To: '+15005550006' };
    await callback(params).expect(204);
    await callback(params).expect(204);
    await callback({ ...params, MessageStatus: 'sending' }).expect(204);
    expect(await statuses()).toEqual(['accepted', 'delivered']);
    expect((await store.listDeliveryReceipts({ deliveryId: DELIVERY }))[1]).toMatchObject({ providerId: SID, at: '2030-03-15T13:31:00.000Z' });
  });

  it('records undelivered with Twilio\'s error code', async () => {
    await callback({ MessageSid: SID, MessageStatus: 'undelivered', ErrorCode: '30003' }).expect(204);
    expect(await statuses()).toEqual(['accepted', 'undelivered:30003']);
  });

  it('refuses a bad or missing signature, an unknown output, another content type; records nothing', async () => {
    await callback({ MessageSid: SID, MessageStatus: 'delivered' }, 'e'.repeat(32)).expect(401);
    await request(app).post('/hooks/twilio/status/sms').type('form').send(`MessageSid=${SID}&MessageStatus=delivered`).expect(401);
    await request(app).post('/hooks/twilio/status/other').set('x-twilio-signature', 'x').type('form').send('a=b').expect(404);
    await request(app).post('/hooks/twilio/status/sms').set('x-twilio-signature', 'x').set('content-type', 'application/json').send('{}').expect(415);
    expect(await statuses()).toEqual(['accepted']);
    expect(lines.filter((l) => l.message === 'hooks.unauthorized').map((l) => l.reason)).toEqual(['bad_signature', 'signature_missing']);
  });

  it('a message no delivery of this output sent is acknowledged and not kept', async () => {
    await callback({ MessageSid: `SM${'b'.repeat(32)}`, MessageStatus: 'failed' }).expect(204);
    expect(lines.map((l) => l.message)).toEqual(['hooks.twilio_unknown_message']);
  });

  it('builds hooks only for twilio outputs that ask for status callbacks', () => {
    const output = (name: string, config: Record<string, unknown>) => ({ type: 'twilio', name, config: { name, ...config }, file: 'x', line: 1, column: 1 });
    const hooks = twilioStatusHooks(
      [
        output('sms', { authToken: { env: 'T' }, statusCallback: { baseUrl: 'https://carerelay.example.org/' } }),
        output('quiet', { authToken: { env: 'T' } }),
        { type: 'outbox', name: 'o', config: {}, file: 'x', line: 1, column: 1 },
      ],
      () => TOKEN,
    );
    expect([...hooks]).toEqual([['sms', { authToken: TOKEN, url: URL_ }]]);
  });
});
